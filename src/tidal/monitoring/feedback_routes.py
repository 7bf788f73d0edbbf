"""The endpoint's feedback route: true labels sent back late, for live quality.

    POST /feedback    {"inference_id": "...", "label": "pos", "row": 0}
                      or {"labels": [{...}, ...]} or [{...}, ...]   → 202 {"accepted": n}

At most ``MAX_LABELS`` labels and ``MAX_BYTES`` per request. Errors are JSON like the rest of
the endpoint (``{"error": {"code", "message"}}``): 400 a body that is not JSON or an inference id
this endpoint never gives (``check_inference_id``), 401/403 keys, 413 too large, 422 labels that
do not validate (the message names the item and what is allowed), 429 over the key's label rate
(with Retry-After), 503 the store could not be written (retry).

Labels can retrain the model, so the route needs a feedback key (``Authorization: Bearer KEY``
with a key whose hash is in ``serving.feedback_keys``; admin keys are not taken) unless
``serving.feedback_open`` says otherwise, which is unsafe. Every stored label keeps who sent it
(``key``: the key's id, a prefix of its hash, or ``anonymous``) and when (``received_at``). Each
key may send ``serving.feedback_rate_per_min`` labels a minute (a token bucket per key).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.errors import InvalidInput, RetryableError
from tidal.monitoring.feedback import (
    ANONYMOUS,
    MAX_LABELS,
    SHAPE,
    FeedbackStore,
    check_inference_id,
)
from tidal.serving import auth

if TYPE_CHECKING:
    from tidal.config import ServingConfig
    from tidal.storage import Store

MAX_BYTES = 4 * 1024 * 1024
_MAX_BUCKETS = 10_000  # keys remembered by the rate limiter (a full bucket is forgotten)

log = logging.getLogger("tidal.monitoring.feedback")


def feedback_routes(
    store: Store,
    config: ServingConfig,
    *,
    prefix: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[Route]:
    """``POST /feedback`` writing to a FeedbackStore over ``store`` (at ``prefix``), with the
    keys, the opt-out and the rate of ``config`` (``serving``)."""
    from tidal.serving.gateway import Problem, _guarded, _json

    feedback = FeedbackStore(store) if prefix is None else FeedbackStore(store, prefix)
    limiter = RateLimiter(config.feedback_rate_per_min, clock)
    if config.feedback_open:
        log.warning(
            "UNSAFE: serving.feedback_open is true: anyone who reaches this endpoint can send "
            "labels to POST /feedback, and labels can retrain the model; give senders keys "
            "('tidal keys create --scope feedback') and set it to false"
        )

    def sender(request: Request) -> str:
        header = request.headers.get("authorization")
        found = auth.match(header, config.feedback_keys)
        if found is not None:
            return found
        if config.feedback_open:
            return ANONYMOUS
        if not config.feedback_keys:
            raise Problem(
                403,
                "no_feedback_keys",
                "POST /feedback needs a feedback key and the endpoint has none; create one with "
                "'tidal keys create --scope feedback' and add its hash to serving.feedback_keys",
            )
        admin = auth.check(header, config.api_keys)
        raise Problem(
            401,
            "unauthorized",
            ("an admin key is not a feedback key; " if admin else "missing or unknown key; ")
            + "send 'Authorization: Bearer <key>' with a key whose hash is in "
            "serving.feedback_keys (create one with 'tidal keys create --scope feedback')",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def post(request: Request) -> Response:
        key = sender(request)
        items = _items(await _read(request, config.body_timeout_s))
        if not items:
            raise Problem(422, "invalid_input", f"no labels in the request; {SHAPE}")
        if len(items) > MAX_LABELS:
            raise Problem(
                413,
                "too_many_labels",
                f"{len(items)} labels in one request, at most {MAX_LABELS} are taken; "
                "send them in several requests",
            )
        _check_ids(items)
        wait = limiter.take(key, len(items))
        if wait is not None:
            raise _rate_problem(len(items), config.feedback_rate_per_min, wait)
        try:
            accepted = await run_in_threadpool(feedback.add, items, key=key)
        except InvalidInput as exc:
            raise Problem(422, exc.code, exc.message) from exc
        except RetryableError as exc:
            raise Problem(
                503, exc.code, f"the labels could not be stored, try again: {exc.message}"
            ) from exc
        return _json({"accepted": accepted}, status=202)

    return [Route("/feedback", _guarded(post), methods=["POST"])]


class RateLimiter:
    """A token bucket per key: ``per_min`` labels a minute, up to a minute's worth at once."""

    def __init__(self, per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_min)
        self.rate = per_min / 60.0
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when)

    def take(self, key: str, n: int) -> float | None:
        """Take ``n`` tokens of ``key``'s bucket: None when taken, else the seconds to wait
        (infinite when ``n`` exceeds a full bucket)."""
        now = self.clock()
        tokens, when = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - when) * self.rate)
        if n > self.capacity:
            return math.inf
        if tokens < n:
            self.buckets[key] = (tokens, now)
            return (n - tokens) / self.rate
        self.buckets[key] = (tokens - n, now)
        if len(self.buckets) > _MAX_BUCKETS:  # forget the keys whose buckets are full again
            self.buckets = {
                k: (t, w)
                for k, (t, w) in self.buckets.items()
                if t + (now - w) * self.rate < self.capacity
            }
        return None


def _rate_problem(n: int, per_min: int, wait: float) -> Exception:
    from tidal.serving.gateway import Problem

    if math.isinf(wait):
        return Problem(
            413,
            "too_many_labels",
            f"{n} labels in one request, but this key may send {per_min} a minute "
            "(serving.feedback_rate_per_min); send them in smaller requests",
        )
    seconds = max(1, math.ceil(wait))
    return Problem(
        429,
        "rate_limited",
        f"this key sent more labels than serving.feedback_rate_per_min ({per_min}) allows; "
        f"retry these {n} labels after {seconds} s (the Retry-After header)",
        headers={"Retry-After": str(seconds)},
    )


def _check_ids(items: list[Any]) -> None:
    """400 naming the first labels whose inference id this endpoint never gives."""
    from tidal.serving.gateway import Problem

    now = time.time()
    problems = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("inference_id"), str):
            problem = check_inference_id(item["inference_id"], now=now)
            if problem is not None:
                problems.append(f"label {index}: {problem}")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise Problem(
            400,
            "invalid_inference_id",
            "; ".join(problems[:3]) + more + ". Send the id of the X-Inference-Id header of "
            "the answer being labelled (32 hex digits)",
        )


async def _read(request: Request, timeout_s: float) -> bytes:
    """The body, at most MAX_BYTES, within ``timeout_s`` (408 after: a slow client holds
    nothing for long)."""
    from tidal.serving.gateway import Problem

    try:
        async with asyncio.timeout(timeout_s):
            return await _read_all(request)
    except TimeoutError:
        raise Problem(
            408,
            "request_timeout",
            f"the request body did not arrive within serving.body_timeout_s = {timeout_s:g} s; "
            "send it at once (and fewer labels per request on a slow link)",
            headers={"Connection": "close"},
        ) from None


async def _read_all(request: Request) -> bytes:
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
