"""The endpoint's OpenAPI 3.0 document, served at ``GET /openapi.json``.

``openapi_schema(manifest, version=...)`` describes every route of the endpoint: the SageMaker
contract (``/ping``, ``/invocations``), the simple routes (``/predict``, ``/model``), the Open
Inference Protocol v2 routes (``/v2/...``, see ``tidal.serving.oip``), ``/metrics`` and
``/admin/reload``. Given the served model's manifest, a row is described with its real features
and types and a prediction with its real labels, so a client generator or a fuzzer
(schemathesis) produces rows the model takes; without one (no model deployed yet) a row is any
object.

The schemas describe the canonical form of a request; the endpoint also reads a little more
than they say (numeric strings for numbers, 0/1 and "true"/"false" for booleans, whole floats
for integers), as ``tidal.serving.inputs`` documents. ``null`` is a missing value everywhere.
"""

from __future__ import annotations

import re
from typing import Any

from tidal.artifact import Feature, Manifest
from tidal.serving.oip import DATATYPES, FEATURE_DATATYPES, OUTPUTS, label_datatype

OPENAPI_VERSION = "3.0.3"
_DATATYPE_JSON = {"BOOL": "boolean", "INT64": "integer", "FP64": "number", "BYTES": "string"}
_ERRORS = {
    400: ("BadRequest", "the body could not be read (not JSON, CSV or UTF-8; a malformed tensor)"),
    401: ("Unauthorized", "missing or unknown API key (send 'Authorization: Bearer <key>')"),
    403: ("Forbidden", "the endpoint has no API keys configured, so admin routes are closed"),
    404: ("NotFound", "no such model"),
    406: ("NotAcceptable", "the Accept header names no format the endpoint answers in"),
    408: ("RequestTimeout", "the body did not arrive within serving.body_timeout_s"),
    409: ("Conflict", "the action does not apply now (no rollout running, or one already is)"),
    413: ("PayloadTooLarge", "the body is larger than serving.max_payload_mb"),
    415: ("UnsupportedMediaType", "the Content-Type is not one the route reads"),
    422: ("InvalidInput", "the body was read but its rows do not fit the model's features"),
    429: ("TooManyRequests", "the endpoint is at its concurrency limit; retry shortly"),
    500: ("InternalError", "the model or the endpoint failed; the log has the error id"),
    503: ("Unavailable", "no model is deployed (yet)"),
}
_PREDICTION_ERRORS = (400, 401, 408, 413, 415, 422, 429, 500, 503)
_ADMIN_ERRORS = (401, 403)
_ANSWERS = ("application/json", "text/csv", "application/jsonlines")
_TAGS = {"/invocations": "prediction", "/predict": "prediction", "/model": "prediction"}


def openapi_schema(
    manifest: Manifest | None,
    *,
    title: str = "Tidal endpoint",
    version: str,
    served: set[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the endpoint, for ``manifest``'s model when given; with
    ``served`` ((path, lower-case method) pairs), only the operations the app has."""
    paths = _paths()
    if served is not None:
        served = {(_shape(path), method) for path, method in served}
        kept = {}
        for path, item in paths.items():
            operations = {m: op for m, op in item.items() if (_shape(path), m) in served}
            if operations:
                shared = {"parameters": item["parameters"]} if "parameters" in item else {}
                kept[path] = {**shared, **operations}
        paths = kept
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": _description(manifest),
        },
        "tags": [
            {"name": "prediction", "description": "SageMaker contract and simple JSON route"},
            {"name": "v2", "description": "Open Inference Protocol v2 (KServe, Triton)"},
            {"name": "operations", "description": "health, metrics, schema, admin"},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(manifest),
            "responses": {
                **{name: _json_response(text, "Error") for name, text in _ERRORS.values()},
                **{f"V2{name}": _json_response(text, "V2Error") for name, text in _ERRORS.values()},
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key created with 'tidal keys create' whose hash "
                    "is in serving.api_keys",
                },
                # POST /feedback's own scope: admin keys are not taken there
                "feedbackKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a feedback key created with 'tidal keys create --scope "
                    "feedback' whose hash is in serving.feedback_keys (none needed only with "
                    "serving.feedback_open, which is unsafe)",
                },
            },
        },
    }


def _shape(path: str) -> str:
    """A route's path with its parameters unnamed: /v2/models/{name} → /v2/models/{}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _description(manifest: Manifest | None) -> str:
    if manifest is None:
        return "Tidal model endpoint; no model is deployed yet, so rows are described generically."
    features = ", ".join(f"{f.name} ({f.type})" for f in manifest.features)
    labels = ", ".join(str(label) for label in manifest.labels)
    return (
        f"Tidal model endpoint serving a {manifest.flavor} {manifest.task} model. "
        f"Features: {features}. Labels: {labels}."
    )


# -- paths ----------------------------------------------------------------------------------


def _paths() -> dict[str, Any]:
    ready = {"200": _json_response("ready", "Ready"), "503": _json_response("no model", "Ready")}
    gets = {  # path: operationId, summary, responses
        "/ping": (
            "ping",
            "Readiness (SageMaker): 200 once a model is loaded",
            {"200": _json_response("ready", "Ping"), "503": _json_response("no model", "Ping")},
        ),
        "/metrics": (
            "metrics",
            "Prometheus metrics (text exposition format 0.0.4)",
            {"200": _content("the metrics", "text/plain", _t("string"))},
        ),
        "/openapi.json": (
            "openapi",
            "This document",
            {"200": _content("OpenAPI 3.0 document", "application/json", _t("object"))},
        ),
        "/model": (
            "model",
            "The served model: version, features, labels",
            {"200": _json_response("the served model", "ModelInfo"), **_errors(503)},
        ),
        "/v2": (
            "v2ServerMetadata",
            "Server metadata",
            {"200": _json_response("it", "ServerMetadata")},
        ),
        "/v2/health/live": ("v2ServerLive", "Liveness", {"200": _json_response("live", "Live")}),
        "/v2/health/ready": ("v2ServerReady", "Readiness: a model is loaded", ready),
    }
    paths: dict[str, Any] = {path: {"get": _op(*spec)} for path, spec in gets.items()}
    paths["/invocations"] = {
        "post": _op(
            "invocations",
            "Predict (SageMaker contract): JSON, CSV or JSON Lines rows",
            {"200": _predictions_response(csv=True), **_errors(*_PREDICTION_ERRORS, 406)},
            body={
                "application/json": {"schema": _ref("PredictRequest")},
                "text/csv": _rows_text("rows in feature order; a first row naming them: header"),
                "application/jsonlines": _rows_text("one row a line"),
            },
            parameters=[
                {
                    "name": "Accept",
                    "in": "header",
                    "required": False,
                    "schema": _t("string", enum=list(_ANSWERS)),
                    "description": "answer format; JSON when left out",
                }
            ],
        )
    }
    paths["/predict"] = {
        "post": _op(
            "predict",
            "Predict: a JSON body, a JSON answer",
            {"200": _predictions_response(csv=False), **_errors(*_PREDICTION_ERRORS)},
            body={"application/json": {"schema": _ref("PredictRequest")}},
        )
    }
    name = _path_parameter("model_name", "the served model's name")
    version = _path_parameter("model_version", "the served version (only that one)")
    for base, parameters, suffix in (
        ("/v2/models/{model_name}", [name], ""),
        ("/v2/models/{model_name}/versions/{model_version}", [name, version], "Version"),
    ):
        paths[base] = {
            "parameters": parameters,
            "get": _op(
                f"v2ModelMetadata{suffix}",
                "Model metadata: input and output tensors",
                {"200": _json_response("the model", "ModelMetadata"), **_errors(404, 503, v2=True)},
            ),
        }
        paths[f"{base}/ready"] = {
            "parameters": parameters,
            "get": _op(
                f"v2ModelReady{suffix}",
                "Model readiness",
                {
                    "200": _json_response("ready", "ModelReady"),
                    "404": _json_response("not served here", "ModelReady"),
                    "503": _json_response("not loaded yet", "ModelReady"),
                },
            ),
        }
        paths[f"{base}/infer"] = {
            "parameters": parameters,
            "post": _op(
                f"v2ModelInfer{suffix}",
                "Inference (Open Inference Protocol v2, JSON tensors)",
                {
                    "200": _json_response("the output tensors", "InferenceResponse"),
                    **_errors(*_PREDICTION_ERRORS, 404, v2=True),
                },
                body={"application/json": {"schema": _ref("InferenceRequest")}},
            ),
        }
    paths["/admin/reload"] = {
        "post": _op(
            "adminReload",
            "Follow the deployment record now",
            {"200": _json_response("reloaded, or nothing new", "Reload"), **_errors(401, 403)},
            security=[{"bearer": []}],
        )
    }
    paths.update(_operations_paths())
    for path, item in paths.items():
        tag = "v2" if path.startswith("/v2") else _TAGS.get(path, "operations")
        for key, operation in item.items():
            if key != "parameters":
                operation["tags"] = [tag]
    return paths


def _operations_paths() -> dict[str, Any]:
    """/feedback and the admin routes beside /admin/reload (served by a workspace's endpoint)."""
    action = {
        "name": "action",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["start", "pause", "resume", "abort", "promote"]},
    }
    rollout = _json_response("the rollout (null: none yet)", "RolloutAnswer")
    return {
        "/feedback": {
            "post": _op(
                "feedback",
                "Late true labels for earlier predictions, by inference id",
                {
                    "202": _json_response("the labels were stored", "FeedbackAccepted"),
                    **_errors(400, 401, 403, 408, 413, 422, 429, 503),
                },
                body={"application/json": {"schema": _ref("FeedbackBody")}},
                security=[{"feedbackKey": []}],
            )
        },
        "/admin/workers": {
            "get": _op(
                "adminWorkers",
                "Each variant's workers, queue and cold starts; the launcher",
                {"200": _json_response("the workers", "Workers"), **_errors(*_ADMIN_ERRORS)},
                security=[{"bearer": []}],
            )
        },
        "/admin/rollout": {
            "get": _op(
                "adminRollout",
                "The running rollout, or the last one",
                {"200": rollout, **_errors(*_ADMIN_ERRORS)},
                security=[{"bearer": []}],
            )
        },
        "/admin/rollout/{action}": {
            "post": {
                **_op(
                    "adminRolloutAction",
                    "Start a rollout ({'version': 'N', 'strategy': ...}), or pause, resume, "
                    "abort or promote the running one",
                    {"200": rollout, **_errors(*_ADMIN_ERRORS, 404, 409, 422)},
                    parameters=[action],
                    security=[{"bearer": []}],
                ),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RolloutStart")}},
                },
            }
        },
    }


def _operations_schemas() -> dict[str, Any]:
    label = {
        "inference_id": _t(
            "string", minLength=1, description="the X-Inference-Id of the prediction"
        ),
        "label": {
            "anyOf": [_t("string", minLength=1), _t("number"), _t("boolean")],
            "description": "the true label, as the model's labels are written",
        },
        "row": _t("integer", minimum=0, description="the row of a multi-row request"),
    }
    return {
        "FeedbackLabel": _object(label, "inference_id label", additionalProperties=False),
        "FeedbackBody": {
            "oneOf": [
                _ref("FeedbackLabel"),
                _object({"labels": _array(_ref("FeedbackLabel"), minItems=1)}, "labels"),
                _array(_ref("FeedbackLabel"), minItems=1),
            ]
        },
        "FeedbackAccepted": _object({"accepted": _t("integer")}, "accepted"),
        "Workers": _object(
            {
                "launcher_pid": _t("integer", nullable=True),
                "launcher_retired": _t("integer"),
                "in_flight": _t("integer"),
                "variants": _array(_t("object")),
            },
            "launcher_pid in_flight variants",
        ),
        "RolloutAnswer": _object({"rollout": _t("object", nullable=True)}, "rollout"),
        "RolloutStart": _object(
            {"version": _t("string"), "strategy": _t("string")},
            "",
            description="start only: the version, a strategy and any rollout.* setting",
        ),
    }


def _op(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
        # prediction routes need a key only with serving.require_key_for_predict
        operation["security"] = [{}, {"bearer": []}]
    if security is not None:
        operation["security"] = security
    operation["responses"] = responses
    return operation


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return _content(description, "application/json", _ref(schema))


def _content(description: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _rows_text(description: str) -> dict[str, Any]:
    """A text body of rows: at least one, so not blank."""
    return {"schema": {"type": "string", "pattern": "\\S", "description": description}}


def _text(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "description": description}}


def _errors(*statuses: int, v2: bool = False) -> dict[str, Any]:
    prefix = "V2" if v2 else ""
    return {
        str(status): {"$ref": f"#/components/responses/{prefix}{_ERRORS[status][0]}"}
        for status in sorted(statuses)
    }


def _predictions_response(*, csv: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref("PredictResponse")}}
    if csv:
        content["text/csv"] = _text("one label a line")
        content["application/jsonlines"] = _text("one prediction object a line")
    return {
        "description": "one prediction per row, in row order",
        "headers": {
            "X-Inference-Id": {"schema": {"type": "string"}, "description": "the inference id"},
            "X-Model-Version": {"schema": {"type": "string"}, "description": "the version"},
        },
        "content": content,
    }


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


# -- schemas --------------------------------------------------------------------------------


def _t(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **extra}


def _object(
    properties: dict[str, Any], required: str | list[str] = "", **extra: Any
) -> dict[str, Any]:
    """An object schema; ``required`` names the required properties, space-separated."""
    schema: dict[str, Any] = {"type": "object", **extra, "properties": properties}
    if required:
        schema["required"] = required.split() if isinstance(required, str) else required
    return schema


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def _schemas(manifest: Manifest | None) -> dict[str, Any]:
    log_id = _t("string", description="error id in the endpoint's log")
    return {
        **_prediction_schemas(manifest),
        **_v2_schemas(manifest),
        **_operations_schemas(),
        "Error": _object({"error": _ref("ErrorDetail"), "inference_id": _t("string")}, "error"),
        "ErrorDetail": _object(
            {
                "code": _t("string", example="invalid_input"),
                "message": _t("string"),
                "hint": _t("string"),
                "id": log_id,
            },
            "code message",
        ),
        "V2Error": _object(
            {"error": _t("string"), "code": _t("string"), "id": log_id},
            required="error",
            description="the Open Inference Protocol error: 'error' is the message",
        ),
        "Ping": _object({"status": _t("string"), "model_version": _t("string")}, "status"),
        "Reload": _object(
            {
                "swapped": _t("boolean"),
                "model_version": _t("string", nullable=True),
                "error": _t("string", nullable=True),
            },
            "swapped",
        ),
    }


_EXAMPLE_VALUES = {"number": 1.5, "integer": 1, "boolean": True, "string": "some text"}


def _example(value: Any) -> dict[str, Any]:
    return {} if value is None else {"example": value}


def _example_row(features: list[Feature]) -> dict[str, Any]:
    return {f.name: _EXAMPLE_VALUES[f.type] for f in features}


def _example_infer(features: list[Feature]) -> dict[str, Any]:
    """One row as one tensor per feature, the layout ``GET /v2/models/{name}`` describes."""
    return {
        "inputs": [
            {
                "name": f.name,
                "shape": [1],
                "datatype": FEATURE_DATATYPES[f.type],
                "data": [_EXAMPLE_VALUES[f.type]],
            }
            for f in features
        ]
    }


def _value(feature_type: str) -> dict[str, Any]:
    formats = {"integer": "int64", "number": "double"}
    if feature_type in formats:
        return _t(feature_type, format=formats[feature_type], nullable=True)
    return _t(feature_type, nullable=True)


def _row(features: list[Feature] | None) -> dict[str, Any]:
    if features is None:
        scalars = [_t("number"), _t("string"), _t("boolean")]
        return _t(
            "object",
            description="feature name → value",
            additionalProperties={"nullable": True, "anyOf": scalars},
        )
    return _object(
        {f.name: _value(f.type) for f in features},
        required=[f.name for f in features],
        description="feature name → value; null is a missing value",
        additionalProperties=False,
    )


def _prediction_schemas(manifest: Manifest | None) -> dict[str, Any]:
    features = manifest.features if manifest else None
    row_forms: list[dict[str, Any]] = [_ref("Row")]  # the forms of one row in a list of rows
    alone: list[dict[str, Any]] = [_ref("Row")]  # the forms of one row sent alone
    if features and len({f.type for f in features}) == 1:  # one type: a list of values is exact
        width = len(features)
        row_forms.append(_array(_value(features[0].type), minItems=width, maxItems=width))
    if features and len(features) == 1:  # a single-feature model takes a bare value as a row
        row_forms.append(_t(features[0].type))
        alone.append(_t(features[0].type))
    rows = _array({"anyOf": row_forms}, minItems=1)
    labels = manifest.labels if manifest else []
    label = _t(_DATATYPE_JSON[label_datatype(labels)]) if labels else {}
    probabilities = _t(
        "object",
        description="label (as text) → probability",
        additionalProperties=_t("number"),
    )
    if labels:
        probabilities["properties"] = {str(lbl): _t("number") for lbl in labels}
    feature = _object(
        {
            "name": _t("string"),
            "type": _t("string", enum=["number", "integer", "boolean", "string"]),
        },
        required="name type",
    )
    return {
        "Row": _row(features),
        "PredictRequest": {
            "description": 'rows as {"instances": [...]}, {"inputs": [...]}, a list of rows, '
            "or one row",
            "anyOf": [
                _object({"instances": rows}, "instances", additionalProperties=False),
                _object({"inputs": rows}, "inputs", additionalProperties=False),
                rows,
                *alone,
            ],
            **_example({"instances": [_example_row(features)]} if features else None),
        },
        "Prediction": _object(
            {
                "label": {**label, "description": "the predicted label"},
                "score": _t("number", description="probability of the label"),
                "probabilities": probabilities,
            },
            "label score probabilities",
        ),
        "PredictResponse": _object(
            {
                "predictions": _array(_ref("Prediction")),
                "model_version": _t("string"),
                "inference_id": _t("string"),
            },
            "predictions model_version inference_id",
        ),
        "ModelInfo": _object(
            {
                "model": _t("string"),
                "version": _t("string"),
                "deployment_id": _t("integer"),
                "deployed_at": _t("string", format="date-time"),
                "flavor": _t("string"),
                "task": _t("string"),
                "features": _array(feature),
                "labels": _array(label),
                "label_column": _t("string"),
            },
            "model version features labels",
        ),
    }


def _v2_schemas(manifest: Manifest | None) -> dict[str, Any]:
    scalars = [_t("number"), _t("string"), _t("boolean")]
    tensor_data = _array(
        {"nullable": True, "anyOf": [*scalars, _array({"anyOf": scalars})]},
        description="the values, flat in row-major order or nested lists",
    )
    shape = _array(_t("integer", minimum=0))
    input_name = _t("string")
    if manifest is not None:
        names = ", ".join(f.name for f in manifest.features)
        width = len(manifest.features)
        input_name["description"] = f"a feature ({names}), or any name for one [n, {width}] tensor"
    tensor = {"name": _t("string"), "datatype": _t("string"), "shape": _array(_t("integer"))}
    datatype = _t("string", enum=list(DATATYPES))
    output_name = _t("string", enum=list(OUTPUTS))
    return {
        "ServerMetadata": _object(
            {"name": _t("string"), "version": _t("string"), "extensions": _array(_t("string"))},
            "name version extensions",
        ),
        "Live": _object({"live": _t("boolean")}),
        "Ready": _object({"ready": _t("boolean")}),
        "ModelReady": _object({"name": _t("string"), "ready": _t("boolean")}),
        "MetadataTensor": _object(tensor, "name datatype shape"),
        "ModelMetadata": _object(
            {
                "name": _t("string"),
                "versions": _array(_t("string")),
                "platform": _t("string"),
                "inputs": _array(_ref("MetadataTensor")),
                "outputs": _array(_ref("MetadataTensor")),
            },
            "name platform inputs outputs",
        ),
        "RequestInput": _object(
            {
                "name": input_name,
                "shape": shape,
                "datatype": datatype,
                "parameters": _t("object"),
                "data": tensor_data,
            },
            "name shape datatype data",
        ),
        "RequestOutput": _object({"name": output_name, "parameters": _t("object")}, "name"),
        "InferenceRequest": _object(
            {
                "id": _t("string"),
                "parameters": _t("object"),
                "inputs": _array(_ref("RequestInput"), minItems=1),
                "outputs": _array(_ref("RequestOutput")),
            },
            "inputs",
            **_example(_example_infer(manifest.features) if manifest else None),
        ),
        "ResponseOutput": _object(
            {
                "name": output_name,
                "shape": shape,
                "datatype": datatype,
                "parameters": _t("object"),
                "data": tensor_data,
            },
            "name shape datatype data",
        ),
        "InferenceResponse": _object(
            {
                "model_name": _t("string"),
                "model_version": _t("string"),
                "id": _t("string"),
                "parameters": _t("object"),
                "outputs": _array(_ref("ResponseOutput")),
            },
            "model_name outputs",
        ),
    }
