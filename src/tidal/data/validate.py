"""Reading an incoming file and deciding whether it may be trained on.

``read_table`` turns the bytes of a CSV, TSV or JSON Lines file into a frame, refusing what it
cannot read with a message that says where the file broke. ``validate`` checks the frame against
the schema of the first accepted file (or, for the first file, that a schema can be read off it)
and the limits in ``validation`` of tidal.yaml; it collects every problem rather than stopping at
the first. ``check`` does the same and raises ``DataRejected`` when a problem was found.
``coerce`` then converts an accepted frame to the schema's columns and types.

``check_size`` refuses, unread, a file above ``validation.max_file_mb``. A CSV is parsed from
its bytes (checked as UTF-8 a chunk at a time, never held as text): a file refused at line 3
costs little more memory than its bytes.

Row numbers in messages count data rows from 1, the header not included.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from tidal.config import Config
from tidal.data.schema import Schema, infer_schema
from tidal.errors import DataRejected

CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
EXTENSIONS = (*CSV_SEPARATORS, *JSONL_EXTENSIONS)
EXAMPLES = 3  # bad values quoted per problem
TRUE = frozenset({"true", "t", "yes", "y", "1"})
FALSE = frozenset({"false", "f", "no", "n", "0"})


# -- reading --------------------------------------------------------------------------------


def check_size(size: int, name: str, max_mb: float) -> None:
    """Refuse a file of ``size`` bytes above ``max_mb`` MB before anything reads it."""
    if size > max_mb * 2**20:
        raise DataRejected(
            f"{name} is {size / 2**20:,.1f} MB; files up to {max_mb:g} MB are accepted "
            "(validation.max_file_mb)",
            hint="split it into smaller files, or raise validation.max_file_mb in tidal.yaml",
        )


def read_table(data: bytes, name: str) -> pd.DataFrame:
    """Parse ``data``, the bytes of the file ``name``, as CSV/TSV or JSON Lines by extension."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataRejected(
            f"{name} has an unsupported extension {suffix or '(none)'!r}; "
            f"allowed: {', '.join(EXTENSIONS)}",
            hint="save the file as CSV (.csv) or JSON Lines (.jsonl)",
        )
    if not data or data.isspace():  # not data.strip(): no copy of a large file
        raise DataRejected(f"{name} is empty", hint="send a file with a header and rows")
    if suffix in CSV_SEPARATORS:
        frame = _read_csv(_utf8(data, name), name, CSV_SEPARATORS[suffix])
    else:
        frame = _read_jsonl(_decode(data, name), name)
    if frame.empty:
        raise DataRejected(f"{name} has a header but no rows", hint="send a file with rows")
    return frame


def _decode(data: bytes, name: str) -> str:
    return _utf8(data, name).decode("utf-8")


def _utf8(data: bytes, name: str) -> bytes:
    """``data`` without a leading BOM, checked to be UTF-8 a chunk at a time (no copy as text)."""
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    step = 1 << 20
    try:
        for start in range(bom, len(data), step):
            decoder.decode(data[start : start + step])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        try:  # once more in one piece, for the exact offset
            data[bom:].decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            offset = exc.start + bom
            line = data[:offset].count(b"\n") + 1
            raise DataRejected(
                f"{name} is not UTF-8: byte {offset} (line {line}) is "
                f"{data[offset : offset + 1]!r}",
                hint="re-save the file as UTF-8 (e.g. 'Save as… CSV UTF-8', or iconv -t UTF-8)",
            ) from exc
        raise  # pragma: no cover - the two decoders agree
    return data[bom:] if bom else data  # spreadsheets often start UTF-8 with a BOM


def _read_csv(data: bytes, name: str, sep: str) -> pd.DataFrame:
    first = data[: 1 << 16].decode("utf-8", errors="ignore")  # the header, however long its row
    header = next(csv.reader(io.StringIO(first), delimiter=sep), [])
    blank = [i + 1 for i, column in enumerate(header) if not column.strip()]
    if blank:
        raise DataRejected(
            f"the header of {name} has no name for column {', '.join(map(str, blank))}",
            hint="give every column a name in the first line of the file",
        )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataRejected(
            f"the header of {name} names {', '.join(map(repr, repeated))} more than once",
            hint="give every column a distinct name",
        )
    try:
        return pd.read_csv(io.BytesIO(data), sep=sep, low_memory=False, encoding="utf-8")
    except pd.errors.EmptyDataError as exc:
        raise DataRejected(
            f"{name} has no header", hint="the first line must name the columns"
        ) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        found = re.search(r"\bline (\d+)", detail)
        where = f" at line {found.group(1)}" if found else ""
        raise DataRejected(
            f"{name} is not valid CSV{where}: {detail}",
            hint="every row needs as many fields as the header; quote fields holding "
            f"{'a tab' if sep == chr(9) else 'a comma'}, a quote or a line break",
        ) from exc


def _read_jsonl(text: str, name: str) -> pd.DataFrame:
    if name.lower().endswith(".json") and text.lstrip().startswith("["):
        return _read_json_array(text, name)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataRejected(
                f"line {number} of {name} is not valid JSON: {exc.msg} (column {exc.colno})",
                hint="write one JSON object per line (JSON Lines)",
            ) from exc
        records.append(_record(record, f"line {number} of {name}"))
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _read_json_array(text: str, name: str) -> pd.DataFrame:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataRejected(
            f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            hint="write one JSON object per line (JSON Lines), or a single array of objects",
        ) from exc
    records = [_record(item, f"item {i} of {name}") for i, item in enumerate(items, start=1)]
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _record(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataRejected(
            f"{where} is a JSON {_json_kind(value)}, not an object",
            hint='each row must be an object of column → value, e.g. {"x": 1, "label": "a"}',
        )
    nested = [key for key, item in value.items() if isinstance(item, (dict, list))]
    if nested:
        raise DataRejected(
            f"{where} holds a nested object or array in {', '.join(map(repr, nested))}; "
            "values must be strings, numbers, booleans or null",
            hint="flatten nested fields into columns of their own",
        )
    return value


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null")


# -- validating -----------------------------------------------------------------------------


@dataclass
class ValidationReport:
    ok: bool
    rows: int
    columns: list[str]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(
    frame: pd.DataFrame, schema: Schema | None, config: Config, *, name: str
) -> ValidationReport:
    """Check ``frame`` (read from ``name``) against ``schema`` and the limits in ``config``.

    With ``schema`` None (the first file) the schema is read off the frame, and the checks that
    compare with an earlier file (columns, types, labels, label shift) are skipped.
    """
    problems: list[str] = []
    warnings: list[str] = []
    limits = config.validation
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis="columns")  # messages and lookups use str names
    if len(frame) < limits.min_rows:
        problems.append(
            f"{name} has {len(frame)} rows; at least {limits.min_rows} are required "
            "(send a larger file, or lower validation.min_rows in tidal.yaml)"
        )
    reference: Schema | None = schema
    if schema is None:
        try:
            reference = infer_schema(frame, config.data, name=name)
        except DataRejected as exc:
            problems.extend(f"{p} ({exc.hint})" if exc.hint else p for p in exc.problems)
        if reference is not None and len(reference.labels) < 2:
            problems.append(
                f"label column {reference.label_column!r} in {name} has a single class "
                f"({reference.labels[0]!r}); a classifier needs at least two "
                "(send a first file with examples of every class)"
            )
    else:
        problems += _missing_columns(columns, schema, name)
        extra = [c for c in columns if c not in schema.columns]
        if extra:
            warnings.append(
                f"{name} has {_columns(extra)} that the schema does not have, ignored "
                f"(the schema's columns are {', '.join(schema.columns)})"
            )
        for feature in schema.features:
            if feature.name in columns:
                problems += _type_problems(frame[feature.name], feature.type, name)
    # when no schema could be read, check every column and leave the label to the message above
    used = reference.columns if reference is not None else columns
    label = reference.label_column if reference is not None else None
    present = [c for c in used if c in columns]
    problems += _missing_values(frame[present], label, limits.max_missing_rate, name)
    if len(present) == len(used):  # duplicates among a subset of the columns would mislead
        problems += _duplicates(frame[present], limits.max_duplicate_rate, name)
    if schema is not None and schema.label_column in columns:
        labels = convert_labels(frame[schema.label_column], schema.labels)
        found, notes = _label_problems(labels, schema, config, name)
        problems += found
        warnings += notes
    return ValidationReport(not problems, len(frame), columns, problems, warnings)


def check(
    frame: pd.DataFrame, schema: Schema | None, config: Config, *, name: str
) -> ValidationReport:
    """``validate``, raising DataRejected with every problem when the file is refused."""
    report = validate(frame, schema, config, name=name)
    if not report.ok:
        count = len(report.problems)
        raise DataRejected(
            f"{name} failed validation with {count} problem{'s' if count > 1 else ''}: "
            + " ".join(f"[{i}] {p}" for i, p in enumerate(report.problems, start=1)),
            problems=report.problems,
            hint="fix the file and send it again; the limits are in the validation section "
            "of tidal.yaml",
        )
    return report


def _missing_columns(columns: list[str], schema: Schema, name: str) -> list[str]:
    problems = []
    expected = ", ".join(schema.columns)
    if schema.label_column not in columns:
        problems.append(
            f"column {schema.label_column!r} missing in {name}; expected columns: {expected} "
            "(set data.label_column in tidal.yaml to use another name)"
        )
    missing = [f for f in schema.feature_names if f not in columns]
    if missing:
        problems.append(
            f"{_columns(missing)} missing in {name}; expected columns: {expected} "
            "(rename the columns in the file, or set data.feature_columns in tidal.yaml)"
        )
    return problems


def _type_problems(series: pd.Series, kind: str, name: str) -> list[str]:
    column = f"column {str(series.name)!r} in {name}"
    present = series.notna().to_numpy()
    if kind in ("number", "integer"):
        numbers = _numbers(series)
        bad = present & ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            return [
                f"{column} has {_count(bad, 'non-numeric value')} "
                f"({_examples(series, bad)}); expected {kind}s as in the first accepted file "
                "(fix the values, or leave the cells empty)"
            ]
        if kind == "integer":
            values = numbers.to_numpy(dtype=float, na_value=np.nan)
            fractional = present & (np.floor(values) != values)
            if fractional.any():
                return [
                    f"{column} has {_count(fractional, 'fractional value')} "
                    f"({_examples(series, fractional)}); expected integers as in the first "
                    "accepted file (round the values, or leave the cells empty)"
                ]
    if kind == "boolean":
        bad = present & series.map(_boolean).isna().to_numpy()
        if bad.any():
            return [
                f"{column} has {_count(bad, 'non-boolean value')} "
                f"({_examples(series, bad)}); expected true/false (or 1/0, yes/no) as in the "
                "first accepted file"
            ]
    return []


def _missing_values(frame: pd.DataFrame, label: str | None, limit: float, name: str) -> list[str]:
    problems = []
    rows = max(len(frame), 1)
    for column in frame.columns:
        empty = frame[column].isna().to_numpy()
        if column == label:
            if empty.any():
                problems.append(
                    f"label column {column!r} in {name} is empty in "
                    f"{_count(empty, 'row')} ({_rows(empty)}); every row needs a label "
                    "(fill the labels, or drop those rows)"
                )
            continue
        rate = empty.sum() / rows
        if rate > limit:
            problems.append(
                f"column {column!r} in {name} is {_pct(rate)} empty ({empty.sum()} of "
                f"{len(frame)} rows); at most {_pct(limit)} is allowed "
                "(fill the gaps, or raise validation.max_missing_rate in tidal.yaml)"
            )
    return problems


def _duplicates(frame: pd.DataFrame, limit: float, name: str) -> list[str]:
    if frame.empty or not len(frame.columns):
        return []
    repeated = int(frame.duplicated().sum())
    rate = repeated / len(frame)
    if rate > limit:
        return [
            f"{name} repeats {repeated} of its {len(frame)} rows ({_pct(rate)}); at most "
            f"{_pct(limit)} may be duplicates (remove the copies, or raise "
            "validation.max_duplicate_rate in tidal.yaml)"
        ]
    return []


def _label_problems(
    labels: pd.Series, schema: Schema, config: Config, name: str
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    values = labels.dropna()
    if values.empty:
        return problems, warnings
    known = {_key(v) for v in schema.labels}
    unknown = values[[_key(v) not in known for v in values]]
    if not unknown.empty:
        new = ", ".join(repr(v) for v in sorted(set(unknown.tolist()), key=str))
        allowed = ", ".join(repr(v) for v in schema.labels)
        if config.validation.allow_new_labels:
            warnings.append(
                f"{name} brings new labels {new} ({len(unknown)} rows); accepted because "
                "validation.allow_new_labels is true"
            )
        else:
            problems.append(
                f"label column {schema.label_column!r} in {name} holds labels the first accepted "
                f"file did not have: {new} ({_plural(len(unknown), 'row')}); "
                f"allowed labels: {allowed} (fix the labels, or set "
                "validation.allow_new_labels: true in tidal.yaml)"
            )
    shares = values.map(str).value_counts(normalize=True)
    current = {str(k): float(v) for k, v in shares.items()}
    baseline = schema.label_distribution
    distance = 0.5 * sum(
        abs(current.get(k, 0.0) - baseline.get(k, 0.0)) for k in {*current, *baseline}
    )
    if distance > config.validation.max_label_shift:
        problems.append(
            f"the label distribution of {name} ({_distribution(current)}) differs from the first "
            f"accepted file's ({_distribution(baseline)}) by {distance:.2f} (total variation "
            f"distance); at most {config.validation.max_label_shift:.2f} is allowed (check the "
            "file comes from the same source, or raise validation.max_label_shift in tidal.yaml)"
        )
    return problems, warnings


# -- converting -----------------------------------------------------------------------------


def coerce(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The schema's columns of an accepted ``frame``, in schema order, as the schema's types.

    Numbers become float64, integers int64 (float64 when a cell is empty), booleans bool (object
    when a cell is empty), strings str; labels take the type of the schema's labels.
    """
    out: dict[str, pd.Series] = {}
    for feature in schema.features:
        series = frame[feature.name]
        if feature.type == "number":
            out[feature.name] = _numbers(series).astype("float64")
        elif feature.type == "integer" and pd.api.types.is_integer_dtype(series.dtype):
            whole = series.notna().all()
            out[feature.name] = series.astype("int64" if whole else "float64")
        elif feature.type == "integer":
            numbers = _numbers(series).astype("float64")
            whole = numbers.notna().all() and bool((np.floor(numbers) == numbers).all())
            out[feature.name] = numbers.astype("int64") if whole else numbers
        elif feature.type == "boolean":
            flags = series.map(_boolean)
            out[feature.name] = flags.astype(bool) if flags.notna().all() else flags
        else:
            out[feature.name] = _texts(series)
    labels = convert_labels(frame[schema.label_column], schema.labels)
    kind = type(schema.labels[0])
    if labels.notna().all() and all(type(v) is kind for v in labels):
        labels = labels.astype({bool: "bool", int: "int64", str: "str"}.get(kind, "object"))
    out[schema.label_column] = labels
    return pd.DataFrame(out, index=frame.index)


def convert_labels(series: pd.Series, labels: list[Any]) -> pd.Series:
    """``series`` with each value converted to the type of ``labels`` where it can be.

    "1" and 1.0 become 1 when the labels are ints, 1 becomes "1" when they are strings, "true"
    becomes True when they are booleans; values that do not convert are kept as they are.
    Returns an object series, missing values as None.
    """
    kind = type(labels[0]) if labels else str
    converted = [_label(v, kind) if not _missing(v) else None for v in series.tolist()]
    return pd.Series(converted, index=series.index, dtype=object, name=series.name)


def _label(value: Any, kind: type) -> Any:
    value = _native(value)
    if kind is bool:
        flag = _boolean(value)
        return value if flag is None else flag
    if kind is int and not isinstance(value, bool):
        number = _number(value)
        return int(number) if number is not None and number.is_integer() else value
    if kind is str:
        return _text(value)
    return value


def _number(value: Any) -> float | None:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _boolean(value: Any) -> bool | None:
    """True/False for a value that reads as a boolean, None for any other."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
    return None


def _numbers(series: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64")
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series
    texts = series.map(lambda v: v.strip() if isinstance(v, str) else v)
    return pd.to_numeric(texts, errors="coerce")


def _texts(series: pd.Series) -> pd.Series:
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series
    values = [None if _missing(v) else _text(v) for v in series.tolist()]
    return pd.Series(values, index=series.index, name=series.name)


def _text(value: Any) -> str:
    value = _native(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- wording --------------------------------------------------------------------------------


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _key(value: Any) -> tuple[str, Any]:
    """A set key that keeps True apart from 1."""
    return (type(value).__name__, value)


def _examples(series: pd.Series, mask: np.ndarray) -> str:
    positions = np.flatnonzero(mask)[:EXAMPLES]
    return ", ".join(f"row {p + 1}: {_native(series.iloc[p])!r}" for p in positions)


def _rows(mask: np.ndarray) -> str:
    positions = np.flatnonzero(mask)
    shown = ", ".join(str(p + 1) for p in positions[:EXAMPLES])
    more = f" and {len(positions) - EXAMPLES} more" if len(positions) > EXAMPLES else ""
    return f"{'row' if len(positions) == 1 else 'rows'} {shown}{more}"


def _count(mask: np.ndarray, noun: str) -> str:
    return _plural(int(np.count_nonzero(mask)), noun)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _columns(names: list[str]) -> str:
    quoted = ", ".join(repr(n) for n in names)
    return f"column {quoted}" if len(names) == 1 else f"columns {quoted}"


def _pct(share: float) -> str:
    return f"{share * 100:.1f}".rstrip("0").rstrip(".") + "%"


def _distribution(shares: dict[str, float]) -> str:
    return ", ".join(f"{k}: {_pct(v)}" for k, v in sorted(shares.items()))
