"""The Open Inference Protocol v2 (KServe v2 / Triton REST) as pure functions over JSON.

    server_metadata(version)                          GET /v2
    model_metadata(name, versions, manifest)          GET /v2/models/{name}
    decode_infer(body, features) -> InferRequest      POST /v2/models/{name}/infer, request
    encode_infer(...) -> dict                         its answer
    error_body(message, code=...) -> dict             an error answer of a /v2 route

A request holds tensors ``{"name", "shape", "datatype", "data"}``; their data, flat row-major
or nested lists, becomes the same rows ``tidal.serving.inputs`` gives (dicts of feature → value
in the model's feature order, coerced to each feature's type, ``null`` = missing). Three
layouts are read, for a model with features ``size, rooms``:

    one tensor per feature    {"name": "size", "shape": [2], ...}, {"name": "rooms", ...}
                              each of shape [n] or [n, 1], the same n for all
    one matrix                any name, shape [n, 2], columns in the manifest's feature order
    one vector                a single-feature (text) model only: any name, shape [n] or [n, 1]

Datatypes: BOOL, UINT8..UINT64, INT8..INT64, FP16..FP64, BYTES (JSON strings). Each feature
takes the datatypes its values can be read from: a number FP*, INT*, UINT*; an integer also FP*
holding whole numbers; a boolean BOOL, or INT*/UINT* holding 0/1; a string BYTES only; and any
feature BYTES whose strings parse. The answer has three tensors: ``label`` [n], ``score`` [n]
(probability of that label) and ``probabilities`` [n, n_labels] in the manifest's label order;
a request's ``outputs`` picks some of them. Answers are always JSON: the binary tensor data
extension is refused in requests (``UnsupportedExtension``: pass the request's
Inference-Header-Content-Length header as ``header_length``) and a client asking for binary
outputs (tritonclient's default) gets JSON tensors, which it reads as well.

Errors: ``MalformedPayload`` (HTTP 400) when the body is not an inference request at all (not
JSON, no ``inputs`` list, a tensor without name/shape/datatype/data, data that does not match
its own shape or datatype); ``InvalidInput`` (HTTP 422) when it is one but does not fit the
model (unknown or missing tensors, a shape or datatype the feature cannot take, a bad value).
Messages name the tensor and list what the model takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tidal.artifact import Feature, Manifest
from tidal.errors import InvalidInput, ModelLoadError
from tidal.serving.inputs import _COERCE, MalformedPayload, Row, _Bad, _names, _show, parse_json

BINARY_HEADER = "Inference-Header-Content-Length"
OUTPUTS = ("label", "score", "probabilities")
FEATURE_DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}

_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP16", "FP32", "FP64")
DATATYPES = ("BOOL", *_INTS, *_FLOATS, "BYTES")
# the JSON values a tensor of each datatype may hold; null is a missing value in any of them
_HOLDS: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool, type(None)}),
    **{d: frozenset({int, type(None)}) for d in _INTS},
    **{d: frozenset({int, float, type(None)}) for d in _FLOATS},
    "BYTES": frozenset({str, type(None)}),
}
_HOLDS_TEXT = {"BOOL": "true or false", "BYTES": "strings"}
# the datatypes each feature type can be read from
_FITS: dict[str, frozenset[str]] = {
    "number": frozenset({*_INTS, *_FLOATS, "BYTES"}),
    "integer": frozenset({*_INTS, *_FLOATS, "BYTES"}),
    "boolean": frozenset({"BOOL", *_INTS, "BYTES"}),
    "string": frozenset({"BYTES"}),
}
_BINARY_HINT = (
    "send the tensors as JSON; with tritonclient: set_data_from_numpy(array, "
    "binary_data=False) and InferRequestedOutput(name, binary_data=False)"
)


class UnsupportedExtension(MalformedPayload):
    """The request uses a protocol extension Tidal does not implement (HTTP 400)."""

    code = "unsupported_extension"


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: the rows, and what the client asked of the answer."""

    rows: list[Row]
    id: str | None = None
    outputs: list[str] | None = None  # output tensors asked for; None: all of them
    parameters: dict[str, Any] = field(default_factory=dict)


class _Tensor:
    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, name: str, shape: list[int], datatype: str, data: list[Any]) -> None:
        self.name = name
        self.shape = shape
        self.datatype = datatype
        self.data = data


# -- metadata -------------------------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    """The answer of ``GET /v2``."""
    return {"name": "tidal", "version": version, "extensions": []}


def model_metadata(name: str, versions: list[str], manifest: Manifest) -> dict[str, Any]:
    """The answer of ``GET /v2/models/{name}``: one input tensor per feature, three outputs."""
    return {
        "name": name,
        "versions": versions,
        "platform": f"tidal-{manifest.flavor}",
        "inputs": [
            {"name": f.name, "datatype": FEATURE_DATATYPES[f.type], "shape": [-1]}
            for f in manifest.features
        ],
        "outputs": [
            {"name": "label", "datatype": label_datatype(manifest.labels), "shape": [-1]},
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(manifest.labels)]},
        ],
    }


def label_datatype(labels: list[Any]) -> str:
    """The datatype of the ``label`` output: BOOL, INT64 or FP64 for such labels, else BYTES."""
    kinds = {type(label) for label in labels}
    if not kinds:
        return "BYTES"
    if kinds == {bool}:
        return "BOOL"
    if kinds == {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"


# -- requests -------------------------------------------------------------------------------


def decode_infer(
    body: bytes, features: list[Feature], *, header_length: str | None = None
) -> InferRequest:
    """The rows and options of an inference request body. ``header_length`` is the request's
    Inference-Header-Content-Length header (binary data extension), refused when given."""
    if not features:
        raise ModelLoadError(
            "the model declares no input features, so no tensor can be checked",
            hint="its manifest (tidal-model.json) must list the features it was trained on",
        )
    blob = None
    if header_length is not None:  # binary data extension: JSON header, then raw tensors
        try:
            cut = int(header_length)
        except ValueError:
            cut = -1
        if not 0 <= cut <= len(body):
            raise MalformedPayload(
                f"{BINARY_HEADER} is {header_length!r}; it must be the JSON header's length "
                f"in bytes, at most the body's {len(body)}"
            )
        body, blob = body[:cut], memoryview(body)[cut:]
    try:
        data = parse_json(body, "request body")
    except MalformedPayload:
        if b'"binary_data_size"' in body:
            raise _binary("binary tensor data after the JSON") from None
        raise
    if type(data) is not dict:
        raise MalformedPayload(
            f"an inference request must be a JSON object, got {_show(data)}; "
            'send {"inputs": [{"name", "shape", "datatype", "data"}, ...]}'
        )
    inputs = data.get("inputs")
    if type(inputs) is not list or not inputs:
        keys = f"its keys are {_names(list(data))}" if data else "it is empty"
        hint = (
            '; rows as {"instances": [...]} go to POST /invocations or /predict'
            if "instances" in data
            else ""
        )
        raise MalformedPayload(
            "an inference request needs 'inputs', a non-empty list of tensors "
            f'{{"name", "shape", "datatype", "data"}}; {keys}{hint}'
        )
    request_id = data.get("id")
    if request_id is not None and type(request_id) is not str:
        raise MalformedPayload(f"the request 'id' must be a string, got {_show(request_id)}")
    parameters = data.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        raise MalformedPayload(f"'parameters' must be an object, got {_show(parameters)}")
    outputs = _requested(data.get("outputs"))
    if blob is not None:
        _inline_binary(inputs, blob)
    tensors = [_tensor(i, raw) for i, raw in enumerate(inputs)]
    return InferRequest(_rows(tensors, features), request_id, outputs, parameters)


_NUMPY = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def _inline_binary(inputs: list[Any], blob: memoryview) -> None:
    """Replace each tensor's ``binary_data_size`` by its values read from ``blob``, in order
    (the binary data extension: fixed-size little-endian values; BYTES as 4-byte length +
    bytes per element)."""
    import numpy as np

    offset = 0
    for index, raw in enumerate(inputs):
        parameters = raw.get("parameters") if type(raw) is dict else None
        if type(parameters) is not dict or "binary_data_size" not in parameters:
            continue
        size = parameters["binary_data_size"]
        name = raw.get("name", f"inputs[{index}]")
        if type(size) is not int or size < 0 or offset + size > len(blob):
            raise MalformedPayload(
                f"tensor '{name}': binary_data_size {size!r} does not fit the "
                f"{len(blob) - offset} bytes left after the JSON header"
            )
        chunk = blob[offset : offset + size]
        offset += size
        datatype = raw.get("datatype")
        if datatype == "BYTES":
            raw["data"] = _bytes_elements(name, chunk)
        elif datatype in _NUMPY:
            dtype = np.dtype(_NUMPY[datatype])
            if size % dtype.itemsize:
                raise MalformedPayload(
                    f"tensor '{name}': {size} bytes is not a whole number of {datatype} values"
                )
            raw["data"] = np.frombuffer(chunk, dtype=dtype).tolist()
        else:
            continue  # an unknown datatype: _tensor names it
        raw["parameters"] = {k: v for k, v in parameters.items() if k != "binary_data_size"}
    if offset != len(blob):
        raise MalformedPayload(
            f"{len(blob) - offset} bytes after the binary tensors belong to no tensor"
        )


def _bytes_elements(name: str, chunk: memoryview) -> list[str]:
    out, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise MalformedPayload(f"tensor '{name}': a BYTES element is cut short")
        length = int.from_bytes(chunk[at : at + 4], "little")
        at += 4
        try:
            out.append(bytes(chunk[at : at + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise MalformedPayload(f"tensor '{name}': a BYTES element is not UTF-8") from None
        at += length
    return out


def _binary(what: str) -> UnsupportedExtension:
    return UnsupportedExtension(
        f"the request uses {what}: the binary tensor data extension is not supported",
        hint=_BINARY_HINT,
    )


def _tensor(index: int, raw: Any) -> _Tensor:
    """One input tensor, checked against itself (not yet against the model); data flattened."""
    if type(raw) is not dict:
        raise MalformedPayload(
            f"inputs[{index}] must be a tensor object "
            f'{{"name", "shape", "datatype", "data"}}, got {_show(raw)}'
        )
    name = raw.get("name")
    if type(name) is not str:
        raise MalformedPayload(f"inputs[{index}] needs a 'name' string, got {_show(name)}")
    parameters = raw.get("parameters")
    if parameters is not None:
        if type(parameters) is not dict:
            raise MalformedPayload(f"tensor '{name}': 'parameters' must be an object")
        if "binary_data_size" in parameters:
            raise _binary(f"binary data for tensor '{name}'")
        if "shared_memory_region" in parameters:
            raise UnsupportedExtension(
                f"tensor '{name}' is in a shared memory region: the shared memory extension "
                "is not supported",
                hint="send the tensor's values in its 'data'",
            )
    shape = raw.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise MalformedPayload(
            f"tensor '{name}': 'shape' must be a list of sizes (whole numbers ≥ 0), "
            f"got {_show(shape)}"
        )
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in _HOLDS:
        raise MalformedPayload(
            f"tensor '{name}': unknown datatype {_show(datatype)}; supported: "
            f"{', '.join(DATATYPES)}"
        )
    holds = _HOLDS[datatype]
    data = raw.get("data")
    if type(data) is not list:
        raise MalformedPayload(f"tensor '{name}': 'data' must be a list, got {_show(data)}")
    for value in data:
        if type(value) not in holds:
            if type(value) is not list:
                raise _not_held(name, datatype, data)
            data = list(_flatten(data))  # nested lists, row-major
            if any(type(v) not in holds for v in data):
                raise _not_held(name, datatype, data)
            break
    if datatype[0] == "U" and any(v is not None and v < 0 for v in data):
        raise _not_held(name, datatype, data)
    size = math.prod(shape)
    if len(data) != size:
        raise MalformedPayload(
            f"tensor '{name}' has shape {shape}, so {size} values, but its data holds {len(data)}"
        )
    return _Tensor(name, shape, datatype, data)


def _flatten(data: list[Any]) -> Iterator[Any]:
    for value in data:
        if type(value) is list:
            yield from _flatten(value)
        else:
            yield value


def _not_held(name: str, datatype: str, data: list[Any]) -> MalformedPayload:
    holds = _HOLDS[datatype]
    unsigned = datatype[0] == "U"
    i, value = next(
        (i, v)
        for i, v in enumerate(data)
        if type(v) not in holds or (unsigned and v is not None and v < 0)
    )
    if datatype in _HOLDS_TEXT:
        what = _HOLDS_TEXT[datatype]
    elif datatype in _FLOATS:
        what = "numbers"
    else:
        what = "whole numbers ≥ 0" if unsigned else "whole numbers"
    return MalformedPayload(
        f"tensor '{name}' is {datatype}, which holds {what}, but data[{i}] is {_show(value)}"
    )


def _rows(tensors: list[_Tensor], features: list[Feature]) -> list[Row]:
    by_name = {t.name: t for t in tensors}
    if len(by_name) != len(tensors):
        twice = sorted({t.name for t in tensors if sum(u.name == t.name for u in tensors) > 1})
        raise InvalidInput(f"tensors {_names(twice)} are given twice; {_expected(features)}")
    if len(tensors) == 1 and all(f.name != tensors[0].name for f in features):
        return _from_one(tensors[0], features)
    ordered = [by_name[f.name] for f in features if f.name in by_name]
    if len(ordered) != len(features) or len(by_name) != len(features):
        names = {f.name for f in features}
        unknown = [t.name for t in tensors if t.name not in names]
        if unknown:
            raise InvalidInput(f"unknown tensors {_names(unknown)}; {_expected(features)}")
        missing = [f.name for f in features if f.name not in by_name]
        raise InvalidInput(f"missing tensors {_names(missing)}; {_expected(features)}")
    columns = []
    first = ordered[0]
    for feature, tensor in zip(features, ordered, strict=True):
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(
                f"tensor '{tensor.name}' has shape {shape}; a feature's tensor has shape [n] "
                f"or [n, 1] for n rows; {_expected(features)}"
            )
        if shape[0] != first.shape[0]:
            raise InvalidInput(
                f"tensor '{tensor.name}' has {shape[0]} rows (shape {shape}), tensor "
                f"'{first.name}' has {first.shape[0]}; every feature's tensor needs the same "
                "number of rows"
            )
        columns.append(_column(tensor, feature, tensor.data))
    return _zip([f.name for f in features], columns, len(columns[0]), features)


def _from_one(tensor: _Tensor, features: list[Feature]) -> list[Row]:
    """Rows from a single tensor not named like a feature: a matrix, or a text model's vector."""
    shape, width = tensor.shape, len(features)
    if not (len(shape) == 2 and shape[1] == width) and not (len(shape) == 1 and width == 1):
        one_row = len(shape) == 1 and shape[0] == width
        raise InvalidInput(
            f"tensor '{tensor.name}' has shape {shape}"
            + (f" (one row is shape [1, {width}])" if one_row else "")
            + f"; {_expected(features)}"
        )
    data = tensor.data
    columns = [
        _column(tensor, feature, data[j::width] if width > 1 else data)
        for j, feature in enumerate(features)
    ]
    count = shape[0]
    return _zip([f.name for f in features], columns, count, features)


def _column(tensor: _Tensor, feature: Feature, values: list[Any]) -> list[Any]:
    """``values``, one per row, coerced to ``feature``'s type."""
    if tensor.datatype not in _FITS[feature.type]:
        fits = [d for d in DATATYPES if d in _FITS[feature.type]]
        where = f"tensor '{tensor.name}'" + (
            f" (column '{feature.name}')" if tensor.name != feature.name else ""
        )
        raise InvalidInput(
            f"{where} is {tensor.datatype}, but feature '{feature.name}' is a "
            f"{feature.type} and takes {', '.join(fits)} "
            f"(preferably {FEATURE_DATATYPES[feature.type]})"
        )
    convert = _COERCE[feature.type]
    try:
        return [convert(v, False) for v in values]
    except _Bad:
        pass
    for row, value in enumerate(values):
        try:
            convert(value, False)
        except _Bad as bad:
            raise InvalidInput(
                f"tensor '{tensor.name}' row {row}: feature '{feature.name}' must be "
                f"{bad.expected}, got {_show(value)}"
            ) from None
    raise AssertionError("a value failed once and then passed")  # pragma: no cover


def _zip(
    names: list[str], columns: list[list[Any]], count: int, features: list[Feature]
) -> list[Row]:
    if count == 0:
        raise InvalidInput(
            f"the request holds no rows (the tensors have 0 rows); {_expected(features)}"
        )
    if len(columns) == 1:
        name = names[0]
        return [{name: value} for value in columns[0]]
    return [dict(zip(names, values)) for values in zip(*columns)]  # noqa: B905 - same lengths


def _expected(features: list[Feature]) -> str:
    """What the model takes, for error messages."""
    if len(features) == 1:
        f = features[0]
        return (
            f"the model takes one tensor of shape [n] or [n, 1], datatype "
            f"{FEATURE_DATATYPES[f.type]}: '{f.name}' (any name is read as this feature)"
        )
    tensors = ", ".join(f"'{f.name}' ({FEATURE_DATATYPES[f.type]}, [n])" for f in features)
    return (
        f"the model takes one tensor per feature: {tensors}; or one tensor of shape "
        f"[n, {len(features)}] with the features in this order: "
        f"{', '.join(f.name for f in features)}"
    )


def _requested(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if type(raw) is not list:
        raise MalformedPayload(
            f"'outputs' must be a list of {{\"name\": ...}} objects, got {_show(raw)}"
        )
    names: list[str] = []
    for i, item in enumerate(raw):
        name = item.get("name") if type(item) is dict else None
        if type(name) is not str:
            raise MalformedPayload(
                f'outputs[{i}] must be an object {{"name": ...}}, got {_show(item)}'
            )
        if name not in names:
            names.append(name)
    _check_outputs(names)
    return names or None


def _check_outputs(names: list[str]) -> None:
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidInput(
            f"unknown outputs {_names(unknown)}; the model answers {_names(OUTPUTS)}",
            hint="leave 'outputs' out to get all of them",
        )


# -- answers --------------------------------------------------------------------------------


def encode_infer(
    model_name: str,
    model_version: str,
    request_id: str,
    predictions: list[dict[str, Any]],
    labels: list[Any],
    outputs: list[str] | None,
) -> dict[str, Any]:
    """The inference response for ``predictions`` ({label, score, probabilities} per row);
    ``outputs`` picks the tensors to answer (None: all), probabilities in ``labels`` order."""
    if outputs:
        _check_outputs(outputs)
    count = len(predictions)
    tensors = []
    for name in outputs or OUTPUTS:
        if name == "label":
            datatype = label_datatype(labels or [p["label"] for p in predictions])
            values = [p["label"] for p in predictions]
            if datatype == "BYTES":
                values = [v if type(v) is str else str(v) for v in values]
            tensors.append(_output("label", [count], datatype, values))
        elif name == "score":
            scores = [float(p["score"]) for p in predictions]
            tensors.append(_output("score", [count], "FP64", scores))
        else:
            keys = [(str(label), label) for label in labels]
            flat = [
                float(_probability(p["probabilities"], text, label))
                for p in predictions
                for text, label in keys
            ]
            tensors.append(_output("probabilities", [count, len(labels)], "FP64", flat))
    return {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "outputs": tensors,
    }


def _probability(probabilities: dict[Any, float], text: str, label: Any) -> float:
    # predictors key probabilities by the label's text; a custom one may use the label itself
    value = probabilities.get(text)
    if value is None:
        value = probabilities.get(label, 0.0)
    return value


def _output(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def error_body(message: str, *, code: str, error_id: str | None = None) -> dict[str, Any]:
    """An error answer of a ``/v2`` route. The protocol's ``error`` is a string (tritonclient
    fails on anything else); Tidal's stable ``code`` and log ``id`` ride beside it."""
    body = {"error": message, "code": code}
    if error_id is not None:
        body["id"] = error_id
    return body
