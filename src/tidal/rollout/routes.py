"""The endpoint's rollout admin routes: what 'tidal rollout' does, over HTTP, behind a key.

    GET  /admin/rollout                   the running rollout, or the last one (null: none)
    POST /admin/rollout/start             {"version": "3", "strategy": "canary", ...settings}
    POST /admin/rollout/pause|resume|abort|promote

Every route needs ``Authorization: Bearer KEY`` (a key whose hash is in serving.api_keys).
A refused action (nothing running, one already running, no alarm on) is a 409 with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.errors import TidalError

if TYPE_CHECKING:
    from tidal.workspace import Workspace

ACTIONS = ("pause", "resume", "abort", "promote")


def rollout_routes(ws: Workspace, authorize: Callable[[Request], None]) -> list[Route]:
    from tidal.rollout.manager import Manager
    from tidal.serving.gateway import Problem, _guarded, _json

    async def status(request: Request) -> Response:
        authorize(request)
        manager = Manager(ws)
        found = await run_in_threadpool(lambda: manager.active() or manager.latest())
        return _json({"rollout": found})

    async def act(request: Request) -> Response:
        authorize(request)
        action = request.path_params["action"]
        manager = Manager(ws)
        if action == "start":
            body = await _body(request)
            version = str(body.pop("version", "")).lstrip("v")
            if not version:
                raise Problem(422, "invalid_input", 'send {"version": "N", "strategy": ...}')
            strategy = body.pop("strategy", None)
            try:
                config = ws.config.rollout.model_copy(update=body)
                config = type(config).model_validate(config.model_dump())
            except Exception as exc:
                raise Problem(422, "invalid_input", f"bad rollout settings: {exc}") from exc
            call: Callable[[], Any] = lambda: manager.start(  # noqa: E731
                version, strategy=strategy, config=config
            )
        elif action in ACTIONS:
            call = getattr(manager, action)
        else:
            raise Problem(
                404, "not_found", f"no action {action!r}; use start, {', '.join(ACTIONS)}"
            )
        try:
            found = await run_in_threadpool(call)
        except TidalError as exc:
            message = exc.message + (f" ({exc.hint})" if exc.hint else "")
            raise Problem(409, exc.code, message) from exc
        return _json({"rollout": found})

    return [
        Route("/admin/rollout", _guarded(status), methods=["GET"]),
        Route("/admin/rollout/{action}", _guarded(act), methods=["POST"]),
    ]


async def _body(request: Request) -> dict[str, Any]:
    from tidal.serving.gateway import Problem
    from tidal.serving.inputs import MalformedPayload, parse_json

    raw = await request.body()
    try:
        data = parse_json(raw or b"{}", "the body")
    except MalformedPayload as exc:
        raise Problem(400, "malformed_json", str(exc)) from exc
    if not isinstance(data, dict):
        raise Problem(400, "malformed_json", "the body must be a JSON object")
    return data
