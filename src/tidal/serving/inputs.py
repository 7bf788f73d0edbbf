"""Request payloads decoded into rows a model takes: dicts of feature → value, nothing else.

Three body formats, one result (a list of rows, each holding exactly the model's features in
its order, values coerced to each feature's type):

    decode_json(body, features)        {"instances": [...]}, {"inputs": [...]}, one object
                                       (one row) or a list of rows
    decode_csv(body, features)         rows without header in feature order (the SageMaker
                                       convention); a first row naming the features is a header
    decode_jsonlines(body, features)   one row per line

A row is an object keyed by feature name or a list of values in feature order. A model with a
single feature (a text model: one string feature) also takes a bare value as a row, so these
all give ``[{"text": "a"}, {"text": "b"}]`` (one row for the bare string and ``{"inputs": "a"}``,
the Hugging Face form):

    {"inputs": ["a", "b"]}   {"instances": ["a", "b"]}   ["a", "b"]   "a"   {"inputs": "a"}
    [{"text": "a"}, {"text": "b"}]   CSV: one quoted text per line   JSON Lines: "a" or {...}

A bare value sent to a model with several features is refused with the list it takes.

Coercion by ``Feature.type``: number → float, integer → int (whole floats accepted), boolean →
bool (true/false/1/0 strings accepted), string → str; numeric strings are accepted for numbers
(every CSV cell is a string); booleans are never numbers. ``null`` and an empty CSV cell become
``None``: a missing value the model handles. Infinity is refused.

Errors: ``MalformedPayload`` (the body cannot be parsed at all; HTTP 400) and ``InvalidInput``
(it parsed but does not fit the model; HTTP 422), each naming the row, the feature, and what
the model takes. Pure functions: no web framework, no model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from tidal.artifact import Feature
from tidal.errors import InvalidInput, ModelLoadError

try:  # orjson is optional: about 3x faster on small bodies when installed
    import orjson

    _loads: Callable[[bytes | str], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] | None = orjson.dumps
    _JSON_ERRORS: tuple[type[Exception], ...] = (
        orjson.JSONDecodeError,
        UnicodeDecodeError,
        RecursionError,
    )
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _dumps = None
    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, RecursionError)

Row = dict[str, Any]
WRAPPERS = ("instances", "inputs")  # TF Serving / SageMaker / KServe v1 style envelopes
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_SHOWN = 60  # longest value repr quoted back in a message


class MalformedPayload(InvalidInput):
    """The body is not valid JSON, CSV or UTF-8: nothing could be read from it (HTTP 400)."""

    code = "malformed_payload"


class _Bad(Exception):
    """One value does not fit its feature; ``expected`` says what would."""

    def __init__(self, expected: str) -> None:
        self.expected = expected


# -- coercion -------------------------------------------------------------------------------
# One function per feature type. ``text`` is true for CSV cells, where "" means missing.


def _number(value: Any, text: bool) -> float | None:
    kind = type(value)
    if kind is float:
        if math.isinf(value):
            raise _Bad("a finite number")
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if value is None:
        return None
    if kind is str:
        if text and value == "":
            return None
        try:
            number = float(value)
        except ValueError:
            raise _Bad("a number") from None
        if math.isinf(number):
            raise _Bad("a finite number")
        return number
    raise _Bad("a number")


def _integer(value: Any, text: bool) -> int | None:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if kind is str:
        if text and value == "":
            return None
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            raise _Bad("a whole number") from None
        kind = float
    if kind is float:
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    raise _Bad("a whole number")


def _boolean(value: Any, text: bool) -> bool | None:
    kind = type(value)
    if kind is bool:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if kind is str:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        if text and word == "":
            return None
    elif kind is int and value in (0, 1):
        return bool(value)
    raise _Bad("true or false (or 1/0)")


def _string(value: Any, text: bool) -> str | None:
    if type(value) is str:
        return None if text and value == "" else value
    if value is None:
        return None
    raise _Bad("a string (put the value in quotes)")


_COERCE: dict[str, Callable[[Any, bool], Any]] = {
    "number": _number,
    "integer": _integer,
    "boolean": _boolean,
    "string": _string,
}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _mismatch(where: str, name: str, bad: _Bad, value: Any) -> InvalidInput:
    return InvalidInput(f"{where}: feature '{name}' must be {bad.expected}, got {_show(value)}")


class _Plan:
    """The features of one model, prepared once per request for the per-row loop."""

    __slots__ = ("features", "names", "single", "steps", "text")

    def __init__(self, features: list[Feature], text: bool) -> None:
        if not features:
            raise ModelLoadError(
                "the model declares no input features, so no row can be checked",
                hint="its manifest (tidal-model.json) must list the features it was trained on",
            )
        self.features = features
        self.names = [f.name for f in features]
        self.steps = [(f.name, _COERCE[f.type]) for f in features]
        self.text = text
        # a model with one feature (a text model) takes a bare value as a row
        self.single = len(features) == 1

    def expected(self) -> str:
        return ", ".join(f"{f.name} ({f.type})" for f in self.features)

    def from_mapping(self, where: str, raw: dict[str, Any]) -> Row:
        row: Row = {}
        text = self.text
        for name, convert in self.steps:
            try:
                value = raw[name]
            except KeyError:
                missing = [n for n in self.names if n not in raw]
                raise InvalidInput(
                    f"{where}: missing features {_names(missing)}; expected: {self.expected()}"
                ) from None
            try:
                row[name] = convert(value, text)
            except _Bad as bad:
                raise _mismatch(where, name, bad, value) from None
        if len(raw) != len(row):
            unknown = [k for k in raw if k not in row]
            raise InvalidInput(
                f"unknown features {_names(unknown)} in {where}; the model takes: "
                f"{self.expected()}",
                hint="remove them, or retrain the model with them",
            )
        return row

    def from_values(self, where: str, raw: Sequence[Any]) -> Row:
        if len(raw) != len(self.steps):
            if self.single:
                raise InvalidInput(
                    f"{where}: {len(raw)} values given, the model takes 1 feature: "
                    f"{self.expected()}"
                )
            raise InvalidInput(
                f"{where}: {len(raw)} values given, the model takes {len(self.steps)} features "
                f"in this order: {', '.join(self.names)}"
            )
        row: Row = {}
        text = self.text
        for (name, convert), value in zip(self.steps, raw, strict=True):
            try:
                row[name] = convert(value, text)
            except _Bad as bad:
                raise _mismatch(where, name, bad, value) from None
        return row

    def from_scalar(self, where: str, raw: Any) -> Row:
        """A bare value as the row of a single-feature model."""
        name, convert = self.steps[0]
        try:
            return {name: convert(raw, self.text)}
        except _Bad as bad:
            raise _mismatch(where, name, bad, raw) from None

    def from_any(self, where: str, raw: Any) -> Row:
        kind = type(raw)
        if kind is dict:
            return self.from_mapping(where, raw)
        if kind is list:
            return self.from_values(where, raw)
        if self.single:
            return self.from_scalar(where, raw)
        if kind is str:
            raise InvalidInput(
                f"{where}: a bare string ({_show(raw)}) is read as the only feature of a "
                f"single-feature model, but this model takes {len(self.steps)} features: "
                f"{self.expected()}",
                hint='send rows as {"feature": value, ...}; to send one row as a list of '
                'values, wrap it: [["a", "b"]]',
            )
        raise InvalidInput(
            f"{where}: expected an object keyed by feature name or a list of "
            f"{len(self.steps)} values, got {_show(raw)}",
            hint='send one row as {"feature": value, ...} and several as [{...}, {...}]',
        )


# -- JSON -----------------------------------------------------------------------------------


MAX_DEPTH = 254  # orjson's encoder limit; a row is 3-4 levels deep, a tensor a few more


def parse_json(body: bytes | str, what: str = "request body") -> Any:
    """A JSON body, at most ``MAX_DEPTH`` arrays and objects deep; MalformedPayload if not.

    The parser takes up to 1,024 levels but Python's own recursion (repr, encoders) stops near
    1,000: a body in between would fail later, in any code that walks it, as a 500. Every JSON
    route parses through here."""
    try:
        data = _loads(body)
    except _JSON_ERRORS as exc:
        raise MalformedPayload(f"{what} is not valid JSON: {exc}") from None
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(data):
        raise MalformedPayload(
            f"{what} nests arrays and objects more than {MAX_DEPTH} levels deep; "
            "rows are objects of values (or lists of values) inside one list"
        )
    return data


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests more than ``MAX_DEPTH`` containers: orjson's encoder stops there,
    in C, ~20x faster than walking the rows in Python (1 ms for 1,000 rows of 30 features)."""
    if _dumps is None:
        return _depth(data) > MAX_DEPTH
    try:
        _dumps(data)
    except TypeError:  # orjson.JSONEncodeError: its recursion limit, past MAX_DEPTH
        return True
    return False


def _depth(data: Any) -> int:
    """How many containers deep ``data`` goes, stopping once past ``MAX_DEPTH`` (no recursion:
    the point is to survive what recursion does not)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, level = stack.pop()
        kind = type(value)
        if kind is not list and kind is not dict:
            continue
        if level > deepest:
            deepest = level
            if deepest > MAX_DEPTH:
                return deepest
        children = value.values() if kind is dict else value
        stack.extend((child, level + 1) for child in children if type(child) in (list, dict))
    return deepest


def _no_rows() -> InvalidInput:
    return InvalidInput(
        "the request holds no rows",
        hint='send at least one, e.g. {"instances": [{"feature": value, ...}]}',
    )


def decode_json(body: bytes, features: list[Feature]) -> list[Row]:
    """Rows from a JSON body: an envelope, one object, or a list of rows."""
    plan = _Plan(features, text=False)
    data = parse_json(body, "request body")
    if type(data) is dict:
        data = _unwrap(plan, data)
    if type(data) is dict:
        return [plan.from_mapping("row 0", data)]
    if type(data) is not list:
        if plan.single and data is not None:
            return [plan.from_scalar("row 0", data)]
        raise InvalidInput(
            f"the request body must be a JSON object or list, got {_show(data)}",
            hint='send {"instances": [{"feature": value, ...}]}'
            + ("" if plan.single else "; a bare value is a row only for single-feature models"),
        )
    if not data:
        raise _no_rows()
    return [plan.from_any(f"row {i}", raw) for i, raw in enumerate(data)]


def _unwrap(plan: _Plan, data: dict[str, Any]) -> Any:
    """The rows inside an envelope; ``data`` itself when it is one row."""
    for key in WRAPPERS:
        if key in data and key not in plan.names:
            others = [k for k in data if k != key]
            if others:
                raise InvalidInput(
                    f"the request has {_names(others)} beside '{key}'; only '{key}' is read",
                    hint=f'send {{"{key}": [{{"feature": value, ...}}]}}',
                )
            rows = data[key]
            if plan.single and rows is not None and type(rows) not in (list, dict):
                return [rows]  # {"inputs": "a text"}: one bare value, the Hugging Face form
            if type(rows) is not list:
                raise InvalidInput(
                    f"'{key}' must be a list of rows, got {_show(rows)}",
                    hint=f'send {{"{key}": [{{"feature": value, ...}}]}}',
                )
            return rows
    return data


def decode_jsonlines(body: bytes, features: list[Feature]) -> list[Row]:
    """Rows from JSON Lines: one object (or list of values) per line; blank lines skipped."""
    plan = _Plan(features, text=False)
    rows: list[Row] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        raw = parse_json(line, f"line {number}")
        rows.append(plan.from_any(f"row {len(rows)} (line {number})", raw))
    if not rows:
        raise _no_rows()
    return rows


# -- CSV ------------------------------------------------------------------------------------


def decode_csv(body: bytes, features: list[Feature]) -> list[Row]:
    """Rows from CSV in feature order; a first row naming every feature is a header."""
    plan = _Plan(features, text=True)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"request body is not valid UTF-8 text: {exc}") from None
    try:
        lines = [(n, cells) for n, cells in enumerate(csv.reader(io.StringIO(text)), 1) if cells]
    except csv.Error as exc:
        raise MalformedPayload(f"request body is not valid CSV: {exc}") from None
    if not lines:
        raise _no_rows()
    header = _header(plan, lines[0][1])
    if header is not None:
        lines = lines[1:]
        if not lines:
            raise _no_rows()
    rows: list[Row] = []
    for i, (number, cells) in enumerate(lines):
        where = f"row {i} (line {number})"
        if header is None or header == plan.names:
            if plan.single and len(cells) > 1:
                raise InvalidInput(
                    f"{where}: {len(cells)} values given, the model takes 1 feature: "
                    f"{plan.expected()}",
                    hint='put a text holding commas in double quotes, e.g. "a moving, '
                    'beautifully acted film", and write a quote inside it twice: ""',
                )
            rows.append(plan.from_values(where, cells))
            continue
        if len(cells) != len(header):
            raise InvalidInput(
                f"{where}: {len(cells)} values given, the header names {len(header)} columns"
            )
        rows.append(plan.from_mapping(where, dict(zip(header, cells, strict=True))))
    return rows


def _header(plan: _Plan, first: list[str]) -> list[str] | None:
    """The first row as a header when it names the features (any order); None when it is data."""
    cells = [c.strip() for c in first]
    if len(cells) == len(plan.names) and set(cells) == set(plan.names):
        return cells
    if not set(cells) & set(plan.names) or _looks_like_data(plan, first):
        return None
    missing = [n for n in plan.names if n not in cells]
    unknown = [c for c in cells if c not in plan.names]
    repeated = sorted({c for c in cells if cells.count(c) > 1})
    problems = [
        f"missing {_names(missing)}" if missing else "",
        f"unknown {_names(unknown)}" if unknown else "",
        f"repeated {_names(repeated)}" if repeated else "",
    ]
    raise InvalidInput(
        "the CSV header does not match the model's features: "
        f"{'; '.join(p for p in problems if p)}; expected: {plan.expected()}",
        hint="send the rows without a header in feature order, or fix the header",
    )


def _looks_like_data(plan: _Plan, cells: list[str]) -> bool:
    try:
        plan.from_values("row 0", cells)
    except InvalidInput:
        return False
    return True
