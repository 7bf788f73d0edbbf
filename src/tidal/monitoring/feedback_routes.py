"""The endpoint's feedback route: true labels sent back late, for live quality.

    POST /feedback    {"inference_id": "...", "label": "pos", "row": 0}
                      or {"labels": [{...}, ...]} or [{...}, ...]   → 202 {"accepted": n}

At most ``MAX_LABELS`` labels and ``MAX_BYTES`` per request. Errors are JSON like the rest of
the endpoint (``{"error": {"code", "message"}}``): 400 a body that is not JSON, 413 too large,
422 labels that do not validate (the message names the item and what is allowed), 503 the store
could not be written (retry). With ``require_key`` the route needs ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.errors import InvalidInput, RetryableError
from tidal.monitoring.feedback import MAX_LABELS, SHAPE, FeedbackStore

if TYPE_CHECKING:
    from tidal.storage import Store

MAX_BYTES = 4 * 1024 * 1024


def feedback_routes(
    store: Store,
    authorize: Callable[[Request], None] | None,
    *,
    require_key: bool,
    prefix: str | None = None,
) -> list[Route]:
    """``POST /feedback`` writing to a FeedbackStore over ``store`` (at ``prefix``)."""
    from tidal.serving.gateway import Problem, _guarded, _json

    if require_key and authorize is None:
        raise ValueError("feedback_routes(require_key=True) needs an authorize callable")
    feedback = FeedbackStore(store) if prefix is None else FeedbackStore(store, prefix)

    async def post(request: Request) -> Response:
        if require_key and authorize is not None:
            authorize(request)
        items = _items(await _read(request))
        if not items:
            raise Problem(422, "invalid_input", f"no labels in the request; {SHAPE}")
        if len(items) > MAX_LABELS:
            raise Problem(
                413,
                "too_many_labels",
                f"{len(items)} labels in one request, at most {MAX_LABELS} are taken; "
                "send them in several requests",
            )
        try:
            accepted = await run_in_threadpool(feedback.add, items)
        except InvalidInput as exc:
            raise Problem(422, exc.code, exc.message) from exc
        except RetryableError as exc:
            raise Problem(
                503, exc.code, f"the labels could not be stored, try again: {exc.message}"
            ) from exc
        return _json({"accepted": accepted}, status=202)

    return [Route("/feedback", _guarded(post), methods=["POST"])]


async def _read(request: Request) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BYTES:
        raise _too_large(int(size))
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_BYTES:
            raise _too_large(received)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int) -> Exception:
    from tidal.serving.gateway import Problem

    return Problem(
        413,
        "payload_too_large",
        f"the request body is {size / (1024 * 1024):.2f} MB or more, /feedback takes at most "
        f"{MAX_BYTES // (1024 * 1024)} MB; send the labels in several requests",
    )


def _items(raw: bytes) -> list[Any]:
    """The labels of a body: one label object, ``{"labels": [...]}``, or a list."""
    from tidal.serving.gateway import Problem
    from tidal.serving.inputs import MalformedPayload, parse_json

    try:
        data = parse_json(raw, "the body")
    except MalformedPayload as exc:
        raise Problem(400, "malformed_json", f"{exc}; {SHAPE}") from exc
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "labels" in data:
            labels = data["labels"]
            if len(data) > 1 or not isinstance(labels, list):
                raise Problem(
                    422, "invalid_input", 'send {"labels": [...]} with no other field; ' + SHAPE
                )
            return labels
        return [data]
    raise Problem(
        422,
        "invalid_input",
        f"the body must be a label object or a list, got {type(data).__name__}",
    )
