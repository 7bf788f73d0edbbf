"""Open Inference Protocol v2 routes (KServe, Triton), over the gateway's shared request path.

    GET  /v2                               server metadata
    GET  /v2/health/live                   200 while the process runs
    GET  /v2/health/ready                  200 when a model is deployed, else 503
    GET  /v2/models/{name}                 model metadata: input and output tensors
    GET  /v2/models/{name}/ready           200 when that model is served, else 503
    POST /v2/models/{name}/infer           typed tensors in, label/score/probabilities out
    (also under /v2/models/{name}/versions/{version}/..., for the served version only)

``name`` is the served model's name (``tidal models list``); the codec is ``tidal.serving.oip``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.serving import oip

if TYPE_CHECKING:
    from tidal.serving.gateway import Gateway
    from tidal.serving.inputs import Row
    from tidal.serving.slot import Loaded

Handler = Callable[[Request], Awaitable[Response]]


def v2_routes(gateway: Gateway, guarded: Callable[[Handler], Handler]) -> list[Route]:
    from tidal.serving.gateway import Problem, _dumps, _json, _tidal_version

    def served(request: Request) -> Loaded:
        """The loaded variant for this request, when the path names the served model."""
        loaded = gateway._loaded(request)
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != loaded.deployment.model or version not in (None, loaded.deployment.version):
            wanted = f"{name!r}" + (f" version {version!r}" if version else "")
            raise Problem(
                404,
                "model_not_found",
                f"model {wanted} is not served here; this endpoint serves "
                f"{loaded.deployment.model!r} version {loaded.deployment.version!r} "
                f"(GET /v2/models/{loaded.deployment.model})",
            )
        return loaded

    async def server(request: Request) -> Response:
        return _json(oip.server_metadata(_tidal_version()))

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        loaded = gateway.router.pick(request.headers).loaded
        return _json({"ready": loaded is not None}, 200 if loaded else 503)

    async def model(request: Request) -> Response:
        loaded = served(request)
        deployment = loaded.deployment
        return _json(
            oip.model_metadata(deployment.model, [deployment.version], loaded.backend.manifest)
        )

    async def model_ready(request: Request) -> Response:
        try:
            served(request)
        except Problem as problem:
            if problem.status != 404 and problem.status != 503:
                raise
            return _json({"name": request.path_params["name"], "ready": False}, problem.status)
        return _json({"name": request.path_params["name"], "ready": True})

    async def infer(request: Request) -> Response:
        binary_header = request.headers.get(oip.BINARY_HEADER)

        def parse(body: bytes, loaded: Loaded) -> tuple[list[Row], Any]:
            decoded = oip.decode_infer(
                body, loaded.backend.manifest.features, header_length=binary_header
            )
            return decoded.rows, decoded

        def render(
            predictions: list[dict[str, Any]], loaded: Loaded, inference_id: str, decoded: Any
        ) -> tuple[bytes, str]:
            answer = oip.encode_infer(
                loaded.deployment.model,
                loaded.deployment.version,
                decoded.id or inference_id,
                predictions,
                loaded.backend.manifest.labels,
                decoded.outputs,
            )
            answer.setdefault("parameters", {})["inference_id"] = inference_id
            return _dumps(answer), "application/json"

        return await gateway.serve_rows(request, "v2_infer", parse, render, served)

    routes = [
        Route("/v2", guarded(server), methods=["GET"]),
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(base, guarded(model), methods=["GET"]),
            Route(f"{base}/ready", guarded(model_ready), methods=["GET"]),
            Route(f"{base}/infer", infer, methods=["POST"]),
        ]
    return routes
