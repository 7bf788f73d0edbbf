"""The Open Inference Protocol v2 codec: the three tensor layouts, its errors, and the Triton
client reading what it writes and writing what it reads."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from tidal.artifact import Feature, Manifest
from tidal.errors import InvalidInput
from tidal.serving.inputs import MalformedPayload
from tidal.serving.oip import (
    UnsupportedExtension,
    decode_infer,
    encode_infer,
    error_body,
    model_metadata,
    server_metadata,
)

FEATURES = [
    Feature("size", "number"),
    Feature("rooms", "integer"),
    Feature("garden", "boolean"),
    Feature("city", "string"),
]
ROWS = [
    {"size": 70.5, "rooms": 3, "garden": True, "city": "Lyon"},
    {"size": 42.0, "rooms": 1, "garden": False, "city": "Paris"},
]
TEXT = [Feature("text", "string")]
LABELS = ["cheap", "pricey"]


def tensor(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def body(*tensors: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def per_feature(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    tensors = {
        "size": tensor("size", [2], "FP64", [70.5, 42.0]),
        "rooms": tensor("rooms", [2], "INT64", [3, 1]),
        "garden": tensor("garden", [2], "BOOL", [True, False]),
        "city": tensor("city", [2], "BYTES", ["Lyon", "Paris"]),
    }
    tensors.update(overrides)
    return list(tensors.values())


# -- layouts --------------------------------------------------------------------------------


def test_one_tensor_per_feature_gives_rows_in_feature_order() -> None:
    decoded = decode_infer(body(*reversed(per_feature())), FEATURES)
    assert decoded.rows == ROWS
    assert list(decoded.rows[0]) == ["size", "rooms", "garden", "city"]
    assert (decoded.id, decoded.outputs, decoded.parameters) == (None, None, {})


def test_feature_tensors_of_shape_n_by_1_nested_or_flat() -> None:
    tensors = per_feature(
        size=tensor("size", [2, 1], "FP64", [[70.5], [42.0]]),
        city=tensor("city", [2, 1], "BYTES", ["Lyon", "Paris"]),
    )
    assert decode_infer(body(*tensors), FEATURES).rows == ROWS


def test_one_matrix_in_feature_order_flat_or_nested() -> None:
    flat = ["70.5", "3", "true", "Lyon", "42", "1", "false", "Paris"]
    nested = [flat[:4], flat[4:]]
    for data in (flat, nested):
        decoded = decode_infer(body(tensor("input__0", [2, 4], "BYTES", data)), FEATURES)
        assert decoded.rows == ROWS


def test_numeric_matrix() -> None:
    features = [Feature("x", "number"), Feature("y", "number")]
    decoded = decode_infer(body(tensor("X", [3, 2], "FP32", [[1, 2], [3.5, 4], [5, 6]])), features)
    assert decoded.rows == [{"x": 1.0, "y": 2.0}, {"x": 3.5, "y": 4.0}, {"x": 5.0, "y": 6.0}]
    assert all(type(v) is float for row in decoded.rows for v in row.values())


@pytest.mark.parametrize(
    "sent",
    [
        tensor("text", [2], "BYTES", ["good film", "bad film"]),
        tensor("anything", [2], "BYTES", ["good film", "bad film"]),
        tensor("anything", [2, 1], "BYTES", [["good film"], ["bad film"]]),
    ],
    ids=["named", "any-name", "n-by-1"],
)
def test_a_text_model_takes_one_vector_of_any_name(sent: dict[str, Any]) -> None:
    assert decode_infer(body(sent), TEXT).rows == [{"text": "good film"}, {"text": "bad film"}]


def test_id_parameters_and_outputs_are_kept() -> None:
    payload = body(
        *per_feature(),
        id="req-7",
        parameters={"priority": 1},
        outputs=[{"name": "label"}, {"name": "score", "parameters": {"binary_data": False}}],
    )
    decoded = decode_infer(payload, FEATURES)
    assert (decoded.id, decoded.outputs, decoded.parameters) == (
        "req-7",
        ["label", "score"],
        {"priority": 1},
    )


def test_values_are_coerced_like_the_other_routes() -> None:
    tensors = per_feature(
        size=tensor("size", [2], "INT32", [70, None]),  # ints are numbers; null is missing
        rooms=tensor("rooms", [2], "FP64", [3.0, 1]),  # whole floats are integers
        garden=tensor("garden", [2], "UINT8", [1, 0]),  # 0/1 are booleans
    )
    rows = decode_infer(body(*tensors), FEATURES).rows
    assert rows[0] == {"size": 70.0, "rooms": 3, "garden": True, "city": "Lyon"}
    assert rows[1]["size"] is None and rows[1]["garden"] is False
    assert type(rows[0]["size"]) is float and type(rows[0]["rooms"]) is int


def test_numbers_may_come_as_strings() -> None:
    sent = per_feature(size=tensor("size", [2], "BYTES", ["70.5", "42"]))
    assert decode_infer(body(*sent), FEATURES).rows == ROWS


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"instances": [{"size": 1}]}', "POST /invocations"),
        (b'{"inputs": []}', "non-empty list of tensors"),
        (body(42), "inputs[0] must be a tensor object"),
        (body({"shape": [1], "datatype": "FP64", "data": [1]}), "needs a 'name'"),
        (body(tensor("size", [-1], "FP64", [1])), "'shape' must be a list of sizes"),
        (body(tensor("size", [True], "FP64", [1])), "'shape' must be a list of sizes"),
        (body(tensor("size", [1], "fp64", [1])), "unknown datatype 'fp64'; supported: BOOL"),
        (body(tensor("size", [1], "BF16", [1])), "unknown datatype 'BF16'"),
        (body({"name": "size", "shape": [1], "datatype": "FP64"}), "'data' must be a list"),
        (body(tensor("size", [3], "FP64", [1, 2])), "shape [3], so 3 values, but its data holds 2"),
        (body(tensor("size", [2, 2], "FP64", [[1, 2], [3]])), "so 4 values, but its data holds 3"),
        (body(tensor("rooms", [2], "INT64", [1, 1.5])), "INT64, which holds whole numbers"),
        (body(tensor("size", [1], "FP64", [True])), "FP64, which holds numbers, but data[0] is"),
        (body(tensor("garden", [1], "BOOL", [1])), "BOOL, which holds true or false"),
        (body(tensor("rooms", [2], "UINT8", [1, -1])), "data[1] is -1"),
        (body(tensor("city", [1], "BYTES", [7])), "BYTES, which holds strings"),
        (body(*per_feature(), id=7), "'id' must be a string"),
        (body(*per_feature(), parameters=[1]), "'parameters' must be an object"),
        (body(*per_feature(), outputs="label"), "'outputs' must be a list"),
        (body(*per_feature(), outputs=[{"nom": "label"}]), 'outputs[0] must be an object {"name"'),
    ],
)
def test_unreadable_requests_are_malformed(payload: bytes, fragment: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        decode_infer(payload, FEATURES)
    assert not isinstance(caught.value, UnsupportedExtension)
    assert fragment in str(caught.value)
    assert caught.value.code == "malformed_payload"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (body(*per_feature(), tensor("age", [2], "INT64", [1, 2])), "unknown tensors 'age'"),
        (body(*per_feature()[:2]), "missing tensors 'garden', 'city'"),
        (body(*per_feature(), per_feature()[0]), "tensors 'size' are given twice"),
        (
            body(*per_feature(size=tensor("size", [1, 2], "FP64", [1, 2]))),
            "tensor 'size' has shape [1, 2]; a feature's tensor has shape [n] or [n, 1]",
        ),
        (
            body(*per_feature(city=tensor("city", [1], "BYTES", ["Lyon"]))),
            "tensor 'city' has 1 rows (shape [1]), tensor 'size' has 2",
        ),
        (body(tensor("x", [1, 3], "FP64", [1, 2, 3])), "tensor 'x' has shape [1, 3];"),
        (body(tensor("x", [4], "BYTES", ["1"] * 4)), "(one row is shape [1, 4])"),
        (
            body(*per_feature(size=tensor("size", [2], "BOOL", [True, False]))),
            "tensor 'size' is BOOL, but feature 'size' is a number and takes INT8",
        ),
        (
            body(*per_feature(city=tensor("city", [2], "FP64", [1, 2]))),
            "takes BYTES (preferably BYTES)",
        ),
        (
            body(tensor("x", [1, 4], "FP64", [1, 2, 3, 4])),
            "tensor 'x' (column 'garden') is FP64",
        ),
        (
            body(*per_feature(size=tensor("size", [2], "BYTES", ["70", "big"]))),
            "tensor 'size' row 1: feature 'size' must be a number, got 'big'",
        ),
        (
            body(*per_feature(rooms=tensor("rooms", [2], "FP32", [2.5, 1]))),
            "tensor 'rooms' row 0: feature 'rooms' must be a whole number, got 2.5",
        ),
        (
            body(*per_feature(garden=tensor("garden", [2], "INT64", [1, 2]))),
            "feature 'garden' must be true or false (or 1/0), got 2",
        ),
        (body(tensor("x", [0, 4], "BYTES", [])), "the request holds no rows"),
        (body(*per_feature(), outputs=[{"name": "classes"}]), "unknown outputs 'classes'"),
    ],
)
def test_requests_that_do_not_fit_the_model_are_invalid(payload: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_infer(payload, FEATURES)
    assert not isinstance(caught.value, MalformedPayload)
    assert fragment in str(caught.value)


def test_a_misfit_lists_what_the_model_takes() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_infer(body(tensor("age", [1], "INT64", [3])), FEATURES)
    message = str(caught.value)
    assert "tensor 'age' has shape [1]" in message
    assert (
        "the model takes one tensor per feature: 'size' (FP64, [n]), 'rooms' (INT64, [n]), "
        "'garden' (BOOL, [n]), 'city' (BYTES, [n]); or one tensor of shape [n, 4] with the "
        "features in this order: size, rooms, garden, city"
    ) in message


def test_a_text_model_misfit_says_it_takes_one_vector() -> None:
    with pytest.raises(
        InvalidInput, match=r"one tensor of shape \[n\] or \[n, 1\], datatype BYTES"
    ):
        decode_infer(body(tensor("a", [1], "BYTES", ["x"]), tensor("b", [1], "BYTES", ["y"])), TEXT)


def test_binary_tensor_data_is_read_after_the_json_header() -> None:
    binary = {
        "name": "size",
        "shape": [2],
        "datatype": "FP64",
        "parameters": {"binary_data_size": 16},
    }
    rooms = {
        "name": "rooms",
        "shape": [2],
        "datatype": "INT64",
        "parameters": {"binary_data_size": 16},
    }
    city = {
        "name": "city",
        "shape": [2],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": 13},
    }
    garden = tensor("garden", [2], "BOOL", [True, False])
    header = body(binary, rooms, garden, city)
    blob = (
        struct.pack("<2d", 1.5, 2.5)
        + struct.pack("<2q", 3, 4)
        + struct.pack("<I", 4)
        + b"Nice"
        + struct.pack("<I", 1)
        + b"X"
    )
    decoded = decode_infer(header + blob, FEATURES, header_length=str(len(header)))
    assert decoded.rows == [
        {"size": 1.5, "rooms": 3, "garden": True, "city": "Nice"},
        {"size": 2.5, "rooms": 4, "garden": False, "city": "X"},
    ]
    # binary sizes that do not add up to the body are refused, not guessed
    with pytest.raises(MalformedPayload, match="bytes left after the JSON header"):
        decode_infer(header + blob[:-4], FEATURES, header_length=str(len(header)))
    with pytest.raises(MalformedPayload, match="belong to no tensor"):
        decode_infer(header + blob + b"??", FEATURES, header_length=str(len(header)))
    with pytest.raises(MalformedPayload, match="JSON header's length"):
        decode_infer(header + blob, FEATURES, header_length="-3")
    # without the header the binary part cannot be found: a clear refusal
    with pytest.raises(UnsupportedExtension, match="binary tensor data extension"):
        decode_infer(body(binary), FEATURES)
    shared = {**per_feature()[0], "parameters": {"shared_memory_region": "r0"}}
    with pytest.raises(UnsupportedExtension, match="shared memory extension"):
        decode_infer(body(shared), FEATURES)
    assert UnsupportedExtension.code == "unsupported_extension"


PREDICTIONS = [
    {"label": "pricey", "score": 0.8, "probabilities": {"cheap": 0.2, "pricey": 0.8}},
    {"label": "cheap", "score": 0.9, "probabilities": {"cheap": 0.9, "pricey": 0.1}},
]


def test_server_and_model_metadata() -> None:
    assert server_metadata("1.2") == {"name": "tidal", "version": "1.2", "extensions": []}
    manifest = Manifest("sklearn", "tabular", FEATURES, LABELS, "price")
    meta = model_metadata("houses", ["3"], manifest)
    assert meta["name"] == "houses" and meta["versions"] == ["3"]
    assert meta["platform"] == "tidal-sklearn"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("size", "FP64", [-1]),
        ("rooms", "INT64", [-1]),
        ("garden", "BOOL", [-1]),
        ("city", "BYTES", [-1]),
    ]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs == {
        "label": ("BYTES", [-1]),
        "score": ("FP64", [-1]),
        "probabilities": ("FP64", [-1, 2]),
    }


def test_encode_gives_every_output_or_the_requested_ones() -> None:
    answer = encode_infer("houses", "3", "req-1", PREDICTIONS, LABELS, None)
    assert answer["model_name"] == "houses" and answer["model_version"] == "3"
    assert answer["id"] == "req-1"
    tensors = {t["name"]: t for t in answer["outputs"]}
    assert tensors["label"] == {
        "name": "label",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["pricey", "cheap"],
    }
    assert tensors["probabilities"]["shape"] == [2, 2]
    assert tensors["probabilities"]["data"] == [0.2, 0.8, 0.9, 0.1]  # row-major, label order
    only = encode_infer("houses", "3", "req-2", PREDICTIONS, LABELS, ["score"])
    assert [t["name"] for t in only["outputs"]] == ["score"]
    with pytest.raises(InvalidInput, match="unknown outputs 'logits'"):
        encode_infer("houses", "3", "req-3", PREDICTIONS, LABELS, ["logits"])


def test_metadata_inputs_are_a_valid_request_layout() -> None:
    """A client that sends one tensor per metadata input, as Triton's do, is understood."""
    manifest = Manifest("sklearn", "tabular", FEATURES, LABELS, "price")
    values = {"FP64": 1.5, "INT64": 2, "BOOL": True, "BYTES": "Nice"}
    tensors = [
        tensor(t["name"], [1], t["datatype"], [values[t["datatype"]]])
        for t in model_metadata("houses", ["3"], manifest)["inputs"]
    ]
    assert decode_infer(body(*tensors), FEATURES).rows == [
        {"size": 1.5, "rooms": 2, "garden": True, "city": "Nice"}
    ]


def test_error_body_puts_the_message_in_error() -> None:
    assert error_body("bad", code="invalid_input") == {"error": "bad", "code": "invalid_input"}
    assert error_body("boom", code="internal_error", error_id="err_1")["id"] == "err_1"


# -- the Triton client ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton() -> Any:
    return pytest.importorskip("tritonclient.http")


def triton_body(triton: Any, inputs: list[Any], **options: Any) -> bytes:
    payload, json_size = triton.InferenceServerClient.generate_request_body(inputs, **options)
    assert json_size is None  # all JSON: no binary part after it
    return bytes(payload)


def triton_input(triton: Any, name: str, array: Any, datatype: str) -> Any:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=False)
    return given


def test_triton_client_requests_are_decoded(triton: Any) -> None:
    np = pytest.importorskip("numpy")
    inputs = [
        triton_input(triton, "city", np.array([["Lyon"], ["Paris"]], dtype=object), "BYTES"),
        triton_input(triton, "size", np.array([70.5, 42.0]), "FP64"),
        triton_input(triton, "rooms", np.array([3, 1], dtype=np.int32), "INT32"),
        triton_input(triton, "garden", np.array([True, False]), "BOOL"),
    ]
    outputs = [triton.InferRequestedOutput("label", binary_data=False)]
    decoded = decode_infer(
        triton_body(triton, inputs, outputs=outputs, request_id="req-9"), FEATURES
    )
    assert decoded.rows == ROWS
    assert (decoded.id, decoded.outputs) == ("req-9", ["label"])


def test_triton_client_matrix_and_text_requests_are_decoded(triton: Any) -> None:
    np = pytest.importorskip("numpy")
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    features = [Feature("x", "number"), Feature("y", "number")]
    # no outputs named: the client asks for binary outputs, which are answered as JSON
    decoded = decode_infer(
        triton_body(triton, [triton_input(triton, "X", matrix, "FP32")]), features
    )
    assert decoded.rows == [{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]
    assert decoded.parameters == {"binary_data_output": True}
    texts = np.array([b"good film", b"bad film"], dtype=np.object_)  # bytes, as numpy holds them
    decoded = decode_infer(
        triton_body(triton, [triton_input(triton, "INPUT", texts, "BYTES")]), TEXT
    )
    assert decoded.rows == [{"text": "good film"}, {"text": "bad film"}]


def test_triton_client_binary_requests_are_decoded(triton: Any) -> None:
    """The client's default (binary_data=True) sends raw tensors after a JSON header."""
    np = pytest.importorskip("numpy")
    inputs = []
    for name, array, datatype in [
        ("size", np.array([70.5, 42.0]), "FP64"),
        ("rooms", np.array([3, 1], dtype=np.int64), "INT64"),
        ("garden", np.array([True, False]), "BOOL"),
        ("city", np.array([b"Lyon", b"Paris"], dtype=np.object_), "BYTES"),
    ]:
        given = triton.InferInput(name, [2], datatype)
        given.set_data_from_numpy(array)  # binary_data=True, the client's default
        inputs.append(given)
    payload, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    assert json_size is not None
    decoded = decode_infer(bytes(payload), FEATURES, header_length=str(json_size))
    assert decoded.rows == ROWS
    with pytest.raises(UnsupportedExtension):  # without the header: refused, not misread
        decode_infer(bytes(payload), FEATURES)


def test_triton_client_reads_our_answer(triton: Any) -> None:
    answer = encode_infer("houses", "3", "req-7", PREDICTIONS, LABELS, None)
    result = triton.InferenceServerClient.parse_response_body(json.dumps(answer).encode())
    assert result.get_response()["id"] == "req-7"
    assert result.as_numpy("label").tolist() == ["pricey", "cheap"]
    assert result.as_numpy("score").tolist() == [0.8, 0.9]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2)
    assert probabilities.tolist() == [[0.2, 0.8], [0.9, 0.1]]


def test_triton_client_reads_our_error(triton: Any) -> None:
    from tritonclient.http._utils import _get_error

    class Answer:  # what the client's HTTP layer hands _get_error
        status_code = 422

        def read(self) -> bytes:
            return json.dumps(error_body("tensor 'x' is unknown", code="invalid_input")).encode()

    error = _get_error(Answer())
    assert str(error) == "[422] tensor 'x' is unknown"
