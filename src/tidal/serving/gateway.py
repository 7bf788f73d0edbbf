"""The endpoint's HTTP face: SageMaker's container contract, a simple JSON route, admin routes.

    GET  /ping            200 {"status": "ready", "model_version": "3"} once a model is loaded,
                          503 before (SageMaker sends traffic only on 200)
    POST /invocations     body application/json | text/csv | application/jsonlines (also
                          application/x-jsonlines); answer by Accept: application/json (default,
                          also for */*), text/csv (one label per line), application/jsonlines
    POST /predict         the curl route: a JSON body whatever the Content-Type says (CSV and
                          JSON Lines when it says so), always a JSON answer
    GET  /model           the served version, its features, labels and deployment time
    POST /admin/reload    follow the deployment record now; always needs an API key

A prediction answer is ``{"predictions": [{"label", "score", "probabilities"}], "model_version",
"inference_id"}``; the same id is in the ``X-Inference-Id`` header of every answer of a
prediction route, errors included. Every error is JSON, ``{"error": {"code", "message"}}``, with
an ``id`` for a 500 whose traceback is in the log under that id: 400 unreadable body, 401/403
keys, 404/405, 406 Accept, 413 too large, 415 Content-Type, 422 rows that do not fit the model,
503 no model yet, 500 the model raised (the endpoint stays up).

The model is called inline: this issue serves fast scikit-learn models in process. The router
(``tidal.serving.slot``) is the seam where worker processes and several variants plug in later.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.artifact import Feature
from tidal.config import ServingConfig
from tidal.errors import ConfigError, InvalidInput
from tidal.serving import auth
from tidal.serving.inputs import MalformedPayload, Row, decode_csv, decode_json, decode_jsonlines
from tidal.serving.slot import Loaded, Router

try:  # orjson is optional; the standard library is the fallback
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


log = logging.getLogger("tidal.serving")

Decoder = Callable[[bytes, list[Feature]], list[Row]]
DECODERS: dict[str, Decoder] = {
    "application/json": decode_json,
    "text/csv": decode_csv,
    "application/jsonlines": decode_jsonlines,
    "application/x-jsonlines": decode_jsonlines,
}
# Accept media type → answer format; the first one a client lists that we know wins.
ANSWERS = {
    "application/json": "json",
    "*/*": "json",
    "application/*": "json",
    "text/csv": "csv",
    "text/*": "csv",
    "application/jsonlines": "jsonlines",
    "application/x-jsonlines": "jsonlines",
}
MEDIA = {"json": "application/json", "csv": "text/csv", "jsonlines": "application/jsonlines"}
ALLOWED_BODIES = "application/json, text/csv, application/jsonlines"
ALLOWED_ANSWERS = "application/json, text/csv, application/jsonlines"
INFERENCE_HEADER = "X-Inference-Id"
VERSION_HEADER = "X-Model-Version"


class Problem(Exception):
    """An HTTP error answer: status, a stable code, a message saying what to do about it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_id = error_id
        self.headers = dict(headers or {})


def _error_response(problem: Problem, inference_id: str | None = None) -> Response:
    error: dict[str, str] = {"code": problem.code, "message": problem.message}
    if problem.error_id:
        error["id"] = problem.error_id
    body: dict[str, Any] = {"error": error}
    headers = dict(problem.headers)
    if inference_id:
        body["inference_id"] = inference_id
        headers[INFERENCE_HEADER] = inference_id
    return Response(_dumps(body), problem.status, headers, "application/json")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status, headers, "application/json")


def _new_error_id() -> str:
    return "err_" + uuid.uuid4().hex[:12]


def _internal(what: str) -> Problem:
    error_id = _new_error_id()
    log.exception("%s (error id %s)", what, error_id)
    return Problem(
        500,
        "internal_error",
        f"{what}; the endpoint's log has the details under error id {error_id}",
        error_id=error_id,
    )


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Answer every failure of ``handler`` as JSON; a bare 500 never leaves the endpoint."""

    @wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as problem:
            return _error_response(problem)
        except Exception:
            return _error_response(_internal(f"{request.method} {request.url.path} failed"))

    return run


class Gateway:
    """The route handlers, over one config and one router."""

    def __init__(self, config: ServingConfig, router: Router) -> None:
        self.config = config
        self.router = router
        self.max_bytes = int(config.max_payload_mb * 1024 * 1024)

    # -- the SageMaker contract and the simple route ------------------------------------------

    async def ping(self, request: Request) -> Response:
        slot = self.router.pick(request.headers)
        loaded = slot.loaded
        if loaded is None or not all(s.ready for s in self.router.slots()):
            return _json({"status": "no model deployed yet"}, 503)
        return _json({"status": "ready", "model_version": loaded.deployment.version})

    async def invocations(self, request: Request) -> Response:
        return await self._predict(request, sagemaker=True)

    async def predict(self, request: Request) -> Response:
        return await self._predict(request, sagemaker=False)

    async def _predict(self, request: Request, *, sagemaker: bool) -> Response:
        inference_id = uuid.uuid4().hex
        try:
            if self.config.require_key_for_predict:
                self._authorize(request)
            headers = request.headers
            if sagemaker:
                decode = self._decoder(headers.get("content-type"))
                answer = _answer_format(headers.get("accept"))
            else:  # curl -d sends form-urlencoded: read JSON unless another known type is named
                decode = DECODERS.get(_media(headers.get("content-type")), decode_json)
                answer = "json"
            body = await self._body(request)
            loaded = self._loaded(request)
            rows = decode(body, loaded.predictor.manifest.features)
            predictions = _call_model(loaded, rows, inference_id)
            version = loaded.deployment.version
            try:
                content = _encode(answer, predictions, version, inference_id)
            except Exception as exc:
                raise _internal(f"the model's answer could not be encoded as {answer}") from exc
        except Problem as problem:
            return _error_response(problem, inference_id)
        except ClientDisconnect:  # the client left mid-body: nobody reads the answer
            return Response(status_code=400, headers={INFERENCE_HEADER: inference_id})
        except MalformedPayload as exc:
            return _error_response(Problem(400, exc.code, str(exc)), inference_id)
        except InvalidInput as exc:
            return _error_response(Problem(422, exc.code, str(exc)), inference_id)
        except Exception:
            return _error_response(_internal(f"{request.url.path} failed"), inference_id)
        return Response(
            content,
            200,
            {INFERENCE_HEADER: inference_id, VERSION_HEADER: version},
            MEDIA[answer],
        )

    async def model(self, request: Request) -> Response:
        loaded = self._loaded(request)
        deployment, manifest = loaded.deployment, loaded.predictor.manifest
        return _json(
            {
                "model": deployment.model,
                "version": deployment.version,
                "deployment_id": deployment.id,
                "deployed_at": datetime.fromtimestamp(deployment.created_at, UTC).isoformat(),
                "flavor": manifest.flavor,
                "task": manifest.task,
                "features": [{"name": f.name, "type": f.type} for f in manifest.features],
                "labels": manifest.labels,
                "label_column": manifest.label_column,
            }
        )

    # -- admin --------------------------------------------------------------------------------

    async def reload(self, request: Request) -> Response:
        self._authorize(request)
        swapped = await run_in_threadpool(self.router.refresh_all, force=True)
        loaded = self.router.pick(request.headers).loaded
        errors = [s.last_error for s in self.router.slots() if s.last_error]
        return _json(
            {
                "swapped": swapped,
                "model_version": loaded.deployment.version if loaded else None,
                "error": "; ".join(errors) if errors else None,
            }
        )

    # -- checks -------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not self.config.api_keys:
            raise Problem(
                403,
                "no_api_keys",
                "admin routes need an API key; create one with 'tidal keys create' "
                "and add its hash to serving.api_keys",
            )
        if not auth.check(request.headers.get("authorization"), self.config.api_keys):
            raise Problem(
                401,
                "unauthorized",
                "missing or unknown API key; send 'Authorization: Bearer <key>' with a key "
                "whose hash is in serving.api_keys (create one with 'tidal keys create')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _decoder(self, content_type: str | None) -> Decoder:
        media = _media(content_type)
        decode = DECODERS.get(media)
        if decode is None:
            given = f"Content-Type {media!r} is" if media else "a request without Content-Type is"
            raise Problem(
                415,
                "unsupported_media_type",
                f"{given} not supported; send one of {ALLOWED_BODIES} "
                "(curl: -H 'Content-Type: application/json')",
            )
        return decode

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Problem(
                    400, "bad_content_length", f"Content-Length {declared!r} is not a number"
                ) from None
            if size > self.max_bytes:
                raise self._too_large(size)
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > self.max_bytes:
                raise self._too_large(received, at_least=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: int, *, at_least: bool = False) -> Problem:
        mb = size / (1024 * 1024)
        return Problem(
            413,
            "payload_too_large",
            f"the request body is {'over ' if at_least else ''}{mb:.2f} MB, the endpoint takes "
            f"at most {self.config.max_payload_mb:g} MB (serving.max_payload_mb); "
            "send fewer rows per request",
        )

    def _loaded(self, request: Request) -> Loaded:
        loaded = self.router.pick(request.headers).loaded
        if loaded is None:
            raise Problem(
                503,
                "no_model",
                "no model is deployed yet; train and deploy one with 'tidal run FILE' "
                f"(the endpoint picks it up within {self.config.reload_interval_s:g} s)",
            )
        return loaded


def _media(content_type: str | None) -> str:
    return content_type.partition(";")[0].strip().lower() if content_type else ""


def _answer_format(accept: str | None) -> str:
    if not accept:
        return "json"
    for part in accept.split(","):
        answer = ANSWERS.get(_media(part))
        if answer is not None:
            return answer
    raise Problem(
        406,
        "not_acceptable",
        f"cannot answer in {accept!r}; the endpoint answers in {ALLOWED_ANSWERS} "
        "(set the Accept header to one of them, or leave it out for JSON)",
    )


def _call_model(loaded: Loaded, rows: list[Row], inference_id: str) -> list[dict[str, Any]]:
    try:
        predictions = loaded.predictor.predict(rows)
    except InvalidInput:
        raise
    except Exception as exc:
        error_id = _new_error_id()
        log.exception(
            "model %s version %s raised on %d rows (error id %s, inference id %s)",
            loaded.deployment.model,
            loaded.deployment.version,
            len(rows),
            error_id,
            inference_id,
        )
        raise Problem(
            500,
            "prediction_failed",
            f"the model raised {type(exc).__name__} on this request; the endpoint's log has "
            f"the details under error id {error_id}",
            error_id=error_id,
        ) from exc
    if not isinstance(predictions, list) or len(predictions) != len(rows):
        count = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise _bad_answer(f"the model returned {count} predictions for {len(rows)} rows")
    return predictions


def _bad_answer(message: str) -> Problem:
    error_id = _new_error_id()
    log.error("%s (error id %s)", message, error_id)
    return Problem(
        500, "prediction_failed", f"{message}; see error id {error_id}", error_id=error_id
    )


def _encode(
    answer: str, predictions: list[dict[str, Any]], version: str, inference_id: str
) -> bytes:
    if answer == "json":
        return _dumps(
            {"predictions": predictions, "model_version": version, "inference_id": inference_id}
        )
    if answer == "jsonlines":
        return b"".join(_dumps(p) + b"\n" for p in predictions)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for prediction in predictions:
        writer.writerow([prediction["label"]])
    return out.getvalue().encode("utf-8")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (
            f"no route {request.url.path}; the endpoint serves GET /ping, POST /invocations, "
            "POST /predict, GET /model, POST /admin/reload"
        )
        return _error_response(Problem(404, "not_found", message))
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        return _error_response(Problem(405, "method_not_allowed", message, headers=exc.headers))
    return _error_response(Problem(exc.status_code, "http_error", exc.detail, headers=exc.headers))


class _Refresher:
    """A daemon thread that calls ``router.refresh_all()`` every ``interval`` seconds."""

    def __init__(self, router: Router, interval: float) -> None:
        self.router = router
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="tidal-model-refresher", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.router.refresh_all()
            except Exception:
                log.exception("refreshing the served model failed; trying again")


def build_app(config: ServingConfig, router: Router, *, refresher: bool = True) -> Starlette:
    """The endpoint's ASGI app. With ``refresher`` it loads the current model at startup and
    follows the deployment record every ``config.reload_interval_s`` until shutdown."""
    if config.require_key_for_predict and not config.api_keys:
        raise ConfigError(
            "serving.require_key_for_predict is true but serving.api_keys is empty, "
            "so no request could be answered",
            hint="create a key with 'tidal keys create' and add its hash to serving.api_keys",
        )
    gateway = Gateway(config, router)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not refresher:
            yield
            return
        router.refresh_all()
        thread = _Refresher(router, config.reload_interval_s)
        thread.start()
        try:
            yield
        finally:
            thread.stop()

    routes = [
        Route("/ping", _guarded(gateway.ping), methods=["GET"]),
        Route("/invocations", gateway.invocations, methods=["POST"]),
        Route("/predict", gateway.predict, methods=["POST"]),
        Route("/model", _guarded(gateway.model), methods=["GET"]),
        Route("/admin/reload", _guarded(gateway.reload), methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
