"""The endpoint's OpenAPI document: valid OpenAPI 3.0, every route, the model's real rows, and
the answers the codecs write fit the schemas it declares."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidal.artifact import Feature, Manifest
from tidal.serving.inputs import decode_json
from tidal.serving.oip import (
    decode_infer,
    encode_infer,
    error_body,
    model_metadata,
    server_metadata,
)
from tidal.serving.openapi import openapi_schema

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis's validator

HOUSES = Manifest(
    "sklearn",
    "tabular",
    [
        Feature("size", "number"),
        Feature("rooms", "integer"),
        Feature("garden", "boolean"),
        Feature("city", "string"),
    ],
    ["cheap", "pricey"],
    "price",
)
NUMERIC = Manifest(
    "sklearn", "tabular", [Feature("x", "number"), Feature("y", "number")], [0, 1], "y"
)
TEXT = Manifest("transformers", "text", [Feature("text", "string")], ["neg", "pos"], "label")
MANIFESTS = [HOUSES, NUMERIC, TEXT, None]
ROUTES = {
    ("/ping", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/invocations", "post"),
    ("/predict", "post"),
    ("/model", "get"),
    ("/v2", "get"),
    ("/v2/health/live", "get"),
    ("/v2/health/ready", "get"),
    ("/v2/models/{model_name}", "get"),
    ("/v2/models/{model_name}/ready", "get"),
    ("/v2/models/{model_name}/infer", "post"),
    ("/v2/models/{model_name}/versions/{model_version}", "get"),
    ("/v2/models/{model_name}/versions/{model_version}/ready", "get"),
    ("/v2/models/{model_name}/versions/{model_version}/infer", "post"),
    ("/admin/reload", "post"),
    ("/admin/workers", "get"),
    ("/admin/rollout", "get"),
    ("/admin/rollout/{action}", "post"),
    ("/feedback", "post"),
}


def conforms(document: dict[str, Any], component: str, instance: Any) -> bool:
    """Whether ``instance`` fits ``#/components/schemas/{component}`` of ``document``."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return bool(jsonschema_rs.Draft4Validator(schema).is_valid(instance))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["houses", "numeric", "text", "no-model"])
def test_the_document_is_valid_openapi_3_0(manifest: Manifest | None) -> None:
    document = openapi_schema(manifest, version="1.2.3")
    assert document["openapi"].startswith("3.0.")
    assert document["info"]["version"] == "1.2.3"
    json.dumps(document)  # served as JSON as it is
    schemathesis.openapi.from_dict(document).validate()


def test_the_validator_catches_a_broken_document() -> None:
    document = openapi_schema(HOUSES, version="1")
    document["paths"]["/ping"]["get"]["responses"]["200"] = {"content": 3}
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(document).validate()


def test_every_route_is_described() -> None:
    document = openapi_schema(HOUSES, title="Houses", version="1")
    described = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert described == ROUTES
    assert document["info"]["title"] == "Houses"
    operations = [op for item in document["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations if isinstance(op, dict)]
    assert len(ids) == len(set(ids)) == len(ROUTES)


def test_the_served_document_lists_only_the_apps_operations() -> None:
    served = {("/ping", "get"), ("/ping", "head"), ("/feedback", "post"), ("/model", "get")}
    served.add(("/v2/models/{name}/infer", "post"))  # the app's own parameter names
    document = openapi_schema(HOUSES, version="1", served=served)
    described = {(p, m) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert described == {
        ("/ping", "get"),
        ("/feedback", "post"),
        ("/model", "get"),
        ("/v2/models/{model_name}/infer", "post"),
    }
    assert document["paths"]["/v2/models/{model_name}/infer"]["parameters"]  # kept with it


def test_the_model_and_operations_answers_fit_their_schemas() -> None:
    document = openapi_schema(HOUSES, version="1")
    model = {  # what GET /model answers (deployment_id is the record's integer id)
        "model": "houses",
        "version": "3",
        "deployment_id": 7,
        "deployed_at": "2026-01-01T00:00:00+00:00",
        "flavor": "sklearn",
        "task": "tabular",
        "features": [{"name": "size", "type": "number"}],
        "labels": ["cheap", "pricey"],
        "label_column": "price",
    }
    assert conforms(document, "ModelInfo", model)
    assert not conforms(document, "ModelInfo", {**model, "deployment_id": "7"})
    label = {"inference_id": "ab12", "label": "pricey", "row": 0}
    for body in (label, {"labels": [label]}, [label]):
        assert conforms(document, "FeedbackBody", body), body
    assert conforms(document, "FeedbackAccepted", {"accepted": 1})
    # (Draft 4 does not read OpenAPI's ``nullable``: schemathesis, which does, checks the nulls)
    workers = {"launcher_pid": 4242, "launcher_retired": 1, "in_flight": 0, "variants": []}
    assert conforms(document, "Workers", workers)
    assert conforms(document, "RolloutAnswer", {"rollout": {"id": 1, "phase": "baking"}})


def test_admin_needs_a_bearer_key_and_predict_routes_may_take_one() -> None:
    document = openapi_schema(None, version="1")
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    paths = document["paths"]
    for path, method in [
        ("/admin/reload", "post"),
        ("/admin/workers", "get"),
        ("/admin/rollout", "get"),
        ("/admin/rollout/{action}", "post"),
    ]:
        assert paths[path][method]["security"] == [{"bearer": []}]
    assert paths["/invocations"]["post"]["security"] == [{}, {"bearer": []}]
    assert "security" not in paths["/ping"]["get"]


def test_invocations_reads_three_formats_and_documents_its_errors() -> None:
    operation = openapi_schema(HOUSES, version="1")["paths"]["/invocations"]["post"]
    assert set(operation["requestBody"]["content"]) == {
        "application/json",
        "text/csv",
        "application/jsonlines",
    }
    assert {"200", "400", "401", "406", "408", "413", "415", "422", "429", "500", "503"} == set(
        operation["responses"]
    )


def test_rows_are_described_with_the_models_features() -> None:
    row = openapi_schema(HOUSES, version="1")["components"]["schemas"]["Row"]
    assert row["required"] == ["size", "rooms", "garden", "city"]
    assert {name: p["type"] for name, p in row["properties"].items()} == {
        "size": "number",
        "rooms": "integer",
        "garden": "boolean",
        "city": "string",
    }
    assert row["additionalProperties"] is False
    generic = openapi_schema(None, version="1")["components"]["schemas"]["Row"]
    assert "properties" not in generic and generic["type"] == "object"


@pytest.mark.parametrize("manifest", [HOUSES, NUMERIC, TEXT], ids=["houses", "numeric", "text"])
def test_generated_prediction_requests_are_rows_the_model_takes(manifest: Manifest) -> None:
    """What a fuzzer draws from the /predict request schema decodes: the schema is not looser
    than the decoder."""
    hypothesis = pytest.importorskip("hypothesis")
    operation = schemathesis.openapi.from_dict(openapi_schema(manifest, version="1"))["/predict"]
    drawn: list[Any] = []

    @hypothesis.given(operation["POST"].as_strategy())
    @hypothesis.settings(
        max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
    )
    def decodes(case: Any) -> None:
        drawn.append(case.body)
        rows = decode_json(json.dumps(case.body).encode(), manifest.features)
        assert rows and all(list(row) == manifest.feature_names for row in rows)

    decodes()
    assert len(drawn) >= 10


def test_the_codecs_answers_fit_the_declared_schemas() -> None:
    document = openapi_schema(HOUSES, version="1")
    predictions = [
        {"label": "pricey", "score": 0.8, "probabilities": {"cheap": 0.2, "pricey": 0.8}},
    ]
    answer = encode_infer("houses", "3", "req-1", predictions, HOUSES.labels, None)
    assert conforms(document, "InferenceResponse", answer)
    assert conforms(document, "ModelMetadata", model_metadata("houses", ["3"], HOUSES))
    assert conforms(document, "ServerMetadata", server_metadata("1"))
    assert conforms(document, "V2Error", error_body("bad", code="invalid_input"))
    response = {"predictions": predictions, "model_version": "3", "inference_id": "abc"}
    assert conforms(document, "PredictResponse", response)
    assert conforms(document, "Error", {"error": {"code": "no_model", "message": "none yet"}})
    # and a wrong answer does not
    assert not conforms(document, "PredictResponse", {"predictions": [{"label": "pricey"}]})
    assert not conforms(document, "V2Error", {"error": {"code": "x", "message": "y"}})


def test_prediction_labels_have_the_models_label_type() -> None:
    schemas = openapi_schema(NUMERIC, version="1")["components"]["schemas"]
    assert schemas["Prediction"]["properties"]["label"]["type"] == "integer"
    assert set(schemas["Prediction"]["properties"]["probabilities"]["properties"]) == {"0", "1"}


@pytest.mark.parametrize("manifest", [HOUSES, NUMERIC, TEXT], ids=["houses", "numeric", "text"])
def test_the_examples_are_requests_the_model_takes(manifest: Manifest) -> None:
    schemas = openapi_schema(manifest, version="1")["components"]["schemas"]
    example = json.dumps(schemas["PredictRequest"]["example"]).encode()
    assert len(decode_json(example, manifest.features)) == 1
    example = json.dumps(schemas["InferenceRequest"]["example"]).encode()
    assert len(decode_infer(example, manifest.features).rows) == 1
    assert "example" not in openapi_schema(None, version="1")["components"]["schemas"]["Row"]
