"""The endpoint's HTTP face: SageMaker's container contract, Open Inference Protocol v2, a simple
JSON route, metrics and admin routes, all on one port.

    GET  /ping            200 {"status": "ready", "model_version": "3"} once a model is
                          deployed and the worker launcher has imported its libraries (workers
                          may be at zero: a request starts one), 503 with the reason before
    POST /invocations     body application/json | text/csv | application/jsonlines (also
                          application/x-jsonlines); answer by Accept: application/json (default,
                          also for */*), text/csv (one label per line), application/jsonlines
    POST /predict         the curl route: a JSON body whatever the Content-Type says (CSV and
                          JSON Lines when it says so), always a JSON answer
    /v2/...               Open Inference Protocol v2 (KServe, Triton): see ``tidal.serving.v2``
    GET  /model           the served version, its features, labels and deployment time
    GET  /metrics         Prometheus text: requests, errors, latency, cold starts, workers,
                          batch sizes, captured and dropped records
    GET  /openapi.json    the OpenAPI document of these routes, with the model's features
    POST /admin/reload    follow the deployment record now; always needs an API key
    GET  /admin/workers   each variant's workers (pids, busy, idle), queue and cold starts; key

A prediction answer is ``{"predictions": [{"label", "score", "probabilities"}], "model_version",
"inference_id"}``; the same id is in the ``X-Inference-Id`` header of every answer of a
prediction route, errors included. Every error is JSON, ``{"error": {"code", "message"}}``, with
an ``id`` for a 500 whose traceback is in the log under that id: 400 unreadable body, 401/403
keys, 404/405, 406 Accept, 408 a body slower than ``body_timeout_s``, 413 too large, 415
Content-Type, 422 rows that do not fit the model, 429 over ``max_concurrency`` (with
Retry-After; a request counts once its body is in), 503 no model yet or a model that cannot start,
500 the model raised (its worker stays up).

The gateway never runs a model: rows go to the variant's backend (``tidal.serving.pool``, worker
processes). The router (``tidal.serving.slot``) picks the variant of each request.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.artifact import Feature
from tidal.config import ServingConfig
from tidal.errors import ConfigError, InvalidInput
from tidal.serving import auth, oip
from tidal.serving.capture import new_inference_id
from tidal.serving.inputs import MalformedPayload, Row, decode_csv, decode_json, decode_jsonlines
from tidal.serving.pool import ModelRaised, WorkerFailed
from tidal.serving.slot import Loaded, Router
from tidal.serving.v2 import v2_routes

if TYPE_CHECKING:
    from tidal.serving.runtime import Runtime

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
GRACE_S = 5.0
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


def _error_response(
    problem: Problem, inference_id: str | None = None, *, v2: bool = False
) -> Response:
    """The JSON error answer; on /v2 routes in the protocol's form (``error`` a string, which
    Triton's client expects), with Tidal's ``code`` and ``id`` beside it."""
    body: dict[str, Any]
    if v2:
        body = oip.error_body(problem.message, code=problem.code, error_id=problem.error_id)
    else:
        error: dict[str, str] = {"code": problem.code, "message": problem.message}
        if problem.error_id:
            error["id"] = problem.error_id
        body = {"error": error}
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
        v2 = _is_v2(request)
        try:
            return await handler(request)
        except Problem as problem:
            return _error_response(problem, v2=v2)
        except Exception:
            failed = _internal(f"{request.method} {request.url.path} failed")
            return _error_response(failed, v2=v2)

    return run


class Gateway:
    """The route handlers, over one config and one router."""

    def __init__(
        self, config: ServingConfig, router: Router, runtime: Runtime | None = None
    ) -> None:
        self.config = config
        self.router = router
        self.runtime = runtime
        self.metrics = runtime.metrics if runtime else None
        self.capture = runtime.capture if runtime else None
        self.max_bytes = int(config.max_payload_mb * 1024 * 1024)
        self.in_flight = 0
        # routers with several variants (tidal.serving.variants) count each and may mirror
        self._variant_stats = getattr(router, "observe", None)
        self._shadow_slot = getattr(router, "shadow_slot", None)
        self._mirrors: set[asyncio.Task[None]] = set()

    # -- the SageMaker contract and the simple route ------------------------------------------

    async def ping(self, request: Request) -> Response:
        slot = self.router.pick(request.headers)
        loaded = slot.loaded
        if loaded is None or not all(s.ready for s in self.router.slots()):
            return _json({"status": "no model deployed yet"}, 503)
        unready = self.runtime.unready() if self.runtime else None
        if unready is not None:  # a request now would wait for the imports, not a model load
            return _json({"status": unready}, 503, {"Retry-After": "1"})
        return _json({"status": "ready", "model_version": loaded.deployment.version})

    async def invocations(self, request: Request) -> Response:
        return await self._predict(request, sagemaker=True)

    async def predict(self, request: Request) -> Response:
        return await self._predict(request, sagemaker=False)

    async def _predict(self, request: Request, *, sagemaker: bool) -> Response:
        headers = request.headers
        if sagemaker:
            content_type, accept = headers.get("content-type"), headers.get("accept")

            def parse(body: bytes, loaded: Loaded) -> tuple[list[Row], str]:
                decode = self._decoder(content_type)
                answer = _answer_format(accept)
                return decode(body, loaded.backend.manifest.features), answer

        else:  # curl -d sends form-urlencoded: read JSON unless another known type is named
            decode = DECODERS.get(_media(headers.get("content-type")), decode_json)

            def parse(body: bytes, loaded: Loaded) -> tuple[list[Row], str]:
                return decode(body, loaded.backend.manifest.features), "json"

        def render(
            predictions: list[dict[str, Any]], loaded: Loaded, inference_id: str, answer: str
        ) -> tuple[bytes, str]:
            version = loaded.deployment.version
            try:
                return _encode(answer, predictions, version, inference_id), MEDIA[answer]
            except Exception as exc:
                raise _internal(f"the model's answer could not be encoded as {answer}") from exc

        return await self.serve_rows(
            request, "invocations" if sagemaker else "predict", parse, render
        )

    async def serve_rows(
        self,
        request: Request,
        route: str,
        parse: Callable[[bytes, Loaded], tuple[list[Row], Any]],
        render: Callable[[list[dict[str, Any]], Loaded, str, Any], tuple[bytes, str]],
        loaded_for: Callable[[Request], Loaded] | None = None,
    ) -> Response:
        """The path every prediction route shares: concurrency limit, key, body, the variant's
        backend, metrics and capture; ``parse`` and ``render`` are the protocol's own."""
        inference_id = new_inference_id()
        started = time.perf_counter()
        labels = ("", "", "")
        counted = False
        try:
            if self.config.require_key_for_predict:
                self._authorize(request)
            loaded = (loaded_for or self._loaded)(request)
            body = await self._timed_body(request)
            # counted once its body is in: slow senders cannot hold every slot (slowloris)
            if self.in_flight >= self.config.max_concurrency:
                return self._overloaded(request, inference_id, route)
            self.in_flight += 1
            counted = True
            deployment = loaded.deployment
            labels = (deployment.model, deployment.version, loaded.variant)
            rows, context = parse(body, loaded)
            predictions = await self._call(loaded, rows, inference_id)
            content, media = render(predictions, loaded, inference_id, context)
        except Exception as exc:
            response = self._failure(exc, request, inference_id)
            if labels[1]:
                response.headers[VERSION_HEADER] = labels[1]  # which version failed
            seconds = self._observe(labels, route, response.status_code, started)
            if self._variant_stats is not None and labels[2]:
                self._variant_stats(labels[2], response.status_code, seconds, None)
            return response
        finally:
            if counted:
                self.in_flight -= 1
        seconds = self._observe(labels, route, 200, started)
        if self._variant_stats is not None:
            self._variant_stats(labels[2], 200, seconds, predictions)
            mirror = self._shadow_slot(request.headers) if self._shadow_slot else None
            if mirror is not None and mirror.loaded is not None and mirror.loaded is not loaded:
                task = asyncio.get_running_loop().create_task(
                    self._mirror(mirror.loaded, rows, inference_id)
                )
                self._mirrors.add(task)
                task.add_done_callback(self._mirrors.discard)
        if self.capture is not None:
            self.capture.offer(*labels, inference_id, seconds * 1000, rows, predictions)
        return Response(
            content,
            200,
            {INFERENCE_HEADER: inference_id, VERSION_HEADER: deployment.version},
            media,
        )

    async def _mirror(self, loaded: Loaded, rows: list[Row], inference_id: str) -> None:
        """Shadow traffic: the same rows to the candidate; counted and captured, never answered."""
        started = time.perf_counter()
        predictions = None
        try:
            predictions = await loaded.backend.predict(rows)
            status = 200
        except InvalidInput:
            status = 422
        except Exception:
            status = 500
        deployment = loaded.deployment
        labels = (deployment.model, deployment.version, loaded.variant)
        seconds = self._observe(labels, "shadow", status, started)
        if self._variant_stats is not None:
            self._variant_stats(loaded.variant, status, seconds, predictions)
        if self.capture is not None and predictions is not None:
            self.capture.offer(*labels, inference_id, seconds * 1000, rows, predictions)

    def _observe(
        self, labels: tuple[str, str, str], route: str, status: int, started: float
    ) -> float:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.request(*labels, route, status, seconds)
        return seconds

    def _overloaded(self, request: Request, inference_id: str, route: str) -> Response:
        if self.metrics is not None:
            self.metrics.rejected("max_concurrency")
            self.metrics.request("", "", "", route, 429, 0.0)
        return _error_response(
            Problem(
                429,
                "too_many_requests",
                f"the endpoint is answering serving.max_concurrency = "
                f"{self.config.max_concurrency} requests already; retry after the "
                "Retry-After header's seconds",
                headers={"Retry-After": "1"},
            ),
            inference_id,
            v2=_is_v2(request),
        )

    def _failure(self, exc: Exception, request: Request, inference_id: str) -> Response:
        """The error answer for anything a prediction route raised."""
        if isinstance(exc, ClientDisconnect):  # the client left mid-body: nobody reads it
            return Response(status_code=400, headers={INFERENCE_HEADER: inference_id})
        if isinstance(exc, Problem):
            problem = exc
        elif isinstance(exc, MalformedPayload):
            problem = Problem(400, exc.code, str(exc))
        elif isinstance(exc, InvalidInput):
            problem = Problem(422, exc.code, str(exc))
        elif isinstance(exc, WorkerFailed):
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            problem = Problem(exc.status, exc.code, str(exc), headers=headers)
        else:
            try:
                raise exc
            except Exception:
                problem = _internal(f"{request.url.path} failed")
        return _error_response(problem, inference_id, v2=_is_v2(request))

    async def _call(
        self, loaded: Loaded, rows: list[Row], inference_id: str
    ) -> list[dict[str, Any]]:
        try:
            return await loaded.backend.predict(rows)
        except ModelRaised as exc:
            error_id = _new_error_id()
            log.error(
                "model %s version %s raised on %d rows (error id %s, inference id %s):\n%s",
                loaded.deployment.model,
                loaded.deployment.version,
                len(rows),
                error_id,
                inference_id,
                exc.trace.rstrip(),
            )
            raise Problem(
                500,
                "prediction_failed",
                f"the model raised {exc.type_name} on this request; the endpoint's log has "
                f"the details under error id {error_id}",
                error_id=error_id,
            ) from exc

    async def model(self, request: Request) -> Response:
        loaded = self._loaded(request)
        deployment, manifest = loaded.deployment, loaded.backend.manifest
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

    async def metrics_text(self, request: Request) -> Response:
        if self.metrics is None:
            return Response(b"", 200, media_type="text/plain; version=0.0.4")
        self.metrics.in_flight(self.in_flight)
        return Response(self.metrics.render(), 200, media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        from tidal.serving.openapi import openapi_schema

        loaded = self.router.pick(request.headers).loaded
        manifest = loaded.backend.manifest if loaded else None
        served = {
            (route.path, method.lower())
            for route in request.app.routes
            if isinstance(route, Route)
            for method in route.methods or ()
        }
        return _json(openapi_schema(manifest, version=_tidal_version(), served=served))

    # -- admin --------------------------------------------------------------------------------

    async def workers(self, request: Request) -> Response:
        self._authorize(request)
        variants = []
        for slot in self.router.slots():
            loaded = slot.loaded
            if loaded is None:
                continue
            variants.append({"model": loaded.deployment.model, **loaded.backend.status()})
        launcher = self.runtime.launcher.pid if self.runtime else None
        retired = self.runtime.launcher.retired if self.runtime else 0
        return _json(
            {
                "launcher_pid": launcher,
                "launcher_retired": retired,
                "in_flight": self.in_flight,
                "variants": variants,
            }
        )

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

    def authorize(self, request: Request) -> None:
        """Raise the 401/403 answer unless the request carries a known API key."""
        self._authorize(request)

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

    async def _timed_body(self, request: Request) -> bytes:
        timeout = self.config.body_timeout_s
        try:
            async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                return await self._body(request)
        except TimeoutError:
            raise Problem(
                408,
                "request_timeout",
                f"the request body did not arrive within serving.body_timeout_s = {timeout:g} s; "
                "send it at once (and fewer rows per request on a slow link)",
                headers={"Connection": "close"},
            ) from None

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


def _is_v2(request: Request) -> bool:
    path: str = request.url.path
    return path == "/v2" or path.startswith("/v2/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    v2 = _is_v2(request)
    if exc.status_code == 404:
        message = (
            f"no route {request.url.path}; the endpoint serves GET /ping, POST /invocations, "
            "POST /predict, /v2/... (Open Inference Protocol), GET /model, GET /metrics, "
            "GET /openapi.json, POST /admin/reload, GET /admin/workers"
        )
        return _error_response(Problem(404, "not_found", message), v2=v2)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        problem = Problem(405, "method_not_allowed", message, headers=exc.headers)
        return _error_response(problem, v2=v2)
    problem = Problem(exc.status_code, "http_error", exc.detail, headers=exc.headers)
    return _error_response(problem, v2=v2)


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


def build_app(
    config: ServingConfig,
    router: Router,
    runtime: Runtime | None = None,
    *,
    refresher: bool = True,
    extra_routes: Callable[[Gateway], list[Route]] | None = None,
) -> Starlette:
    """The endpoint's ASGI app. ``runtime`` (the worker launcher, metrics, capture) starts and
    stops with it. With ``refresher`` it loads the current model at startup and follows the
    deployment record every ``config.reload_interval_s`` until shutdown."""
    if config.require_key_for_predict and not config.api_keys:
        raise ConfigError(
            "serving.require_key_for_predict is true but serving.api_keys is empty, "
            "so no request could be answered",
            hint="create a key with 'tidal keys create' and add its hash to serving.api_keys",
        )
    gateway = Gateway(config, router, runtime)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            runtime.start(asyncio.get_running_loop())
        thread = None
        try:
            if refresher:
                await asyncio.to_thread(router.refresh_all)
                thread = _Refresher(router, config.reload_interval_s)
                thread.start()
            # what start-up made (modules, the app) lives as long as the process: moved out of
            # the collector's reach, a full collection no longer walks it (50 → 6 ms pauses
            # with capture on, bench/monitoring_bench.py)
            gc.collect()
            gc.freeze()
            yield
        finally:
            if thread is not None:
                thread.stop()
            every = getattr(router, "all_slots", router.slots)()
            for backend in [b for slot in every for b in slot.backends()]:
                close = getattr(backend, "close", None)
                if close is not None:
                    await close(grace_s=GRACE_S)
            if runtime is not None:
                await asyncio.to_thread(runtime.stop)

    guarded = _guarded
    routes = [
        Route("/ping", guarded(gateway.ping), methods=["GET"]),
        Route("/invocations", gateway.invocations, methods=["POST"]),
        Route("/predict", gateway.predict, methods=["POST"]),
        Route("/model", guarded(gateway.model), methods=["GET"]),
        Route("/metrics", guarded(gateway.metrics_text), methods=["GET"]),
        Route("/openapi.json", guarded(gateway.openapi), methods=["GET"]),
        *v2_routes(gateway, guarded),
        Route("/admin/reload", guarded(gateway.reload), methods=["POST"]),
        Route("/admin/workers", guarded(gateway.workers), methods=["GET"]),
        *(extra_routes(gateway) if extra_routes else []),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


def _tidal_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tidal")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
