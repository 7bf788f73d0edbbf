"""The schema of a dataset: its label column, its features with their types, and its labels.

The first accepted file defines the schema; every later file is validated against it and every
model trained on it takes exactly these features. ``infer_schema`` reads the schema off a frame:

- the label column is ``data.label_column``; the features are ``data.feature_columns`` when set,
  otherwise every other column (for ``data.task: text``, only the text column);
- a feature's type comes from its dtype: bool → boolean, integer → integer, float → number (a
  float column whose values are all whole stays number: integers with gaps read as floats),
  anything else → string; the text column of a text task is always string;
- labels are the sorted distinct label values as Python natives (int, str or bool); float labels
  that are all whole numbers become ints, other float labels are refused (Tidal trains
  classifiers).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tidal.artifact import Feature, FeatureType
from tidal.config import DataConfig
from tidal.errors import DataRejected

TEXT_COLUMN = "text"  # the text column of a text task when data.text_column is not set


@dataclass
class Schema:
    label_column: str
    features: list[Feature]  # in the file's column order
    labels: list[Any]  # sorted distinct label values: all int, all str or all bool
    label_distribution: dict[str, float]  # str(label) → share of rows; shares sum to 1
    rows: int  # rows of the file the schema was read from
    text_column: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        """Every column a file must have: the features, then the label."""
        return [*self.feature_names, self.label_column]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        data = json.loads(text)
        data["features"] = [Feature(**f) for f in data["features"]]
        return cls(**data)


def infer_schema(frame: pd.DataFrame, data: DataConfig, *, name: str = "the file") -> Schema:
    """Read the schema off ``frame`` as ``data`` describes it; raise DataRejected if it cannot.

    ``name`` is the file the frame came from, used in messages.
    """
    columns = [str(c) for c in frame.columns]
    found = ", ".join(columns) or "none"
    label = data.label_column
    if label not in columns:
        raise DataRejected(
            f"label column {label!r} missing in {name}; columns found: {found}",
            hint="set data.label_column in tidal.yaml to the column holding the label",
        )
    text = _text_column(frame, data, name) if data.task == "text" else None
    names = _feature_names(columns, data, text, name)
    features = [
        Feature(column, "string" if column == text else feature_type(frame[column]))
        for column in names
    ]
    labels, distribution = _labels(frame[label], name)
    return Schema(
        label_column=label,
        features=features,
        labels=labels,
        label_distribution=distribution,
        rows=len(frame),
        text_column=text,
    )


def feature_type(series: pd.Series) -> FeatureType:
    """The feature type of a column, from its dtype (object columns: from their values)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "integer"
    if pd.api.types.is_float_dtype(series.dtype):
        return "number"
    if series.dtype == object:
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred == "boolean":
            return "boolean"
        if inferred == "integer":
            return "integer"
        if inferred in ("floating", "mixed-integer-float", "decimal"):
            return "number"
    return "string"


def natives(values: pd.Series) -> list[Any]:
    """The non-missing values of ``values`` as Python natives (whole floats become ints).

    Values of mixed kinds (say 1 and "a") all become strings, so they can be sorted and compared.
    """
    out = [v.item() if isinstance(v, np.generic) else v for v in values.dropna().tolist()]
    if out and all(isinstance(v, float) for v in out) and all(v.is_integer() for v in out):
        out = [int(v) for v in out]
    kinds = {type(v) for v in out}
    if len(kinds) > 1:
        out = [_as_text(v) for v in out]
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _text_column(frame: pd.DataFrame, data: DataConfig, name: str) -> str:
    columns = [str(c) for c in frame.columns]
    if data.text_column is not None:
        if data.text_column not in columns:
            raise DataRejected(
                f"text column {data.text_column!r} missing in {name}; "
                f"columns found: {', '.join(columns)}",
                hint="set data.text_column in tidal.yaml to the column holding the text",
            )
        return data.text_column
    if TEXT_COLUMN in columns:
        return TEXT_COLUMN
    raise DataRejected(
        f"data.task is text but data.text_column is not set and {name} has no column "
        f"{TEXT_COLUMN!r}; columns found: {', '.join(columns)}",
        hint="set data.text_column in tidal.yaml to the column holding the text",
    )


def _feature_names(columns: list[str], data: DataConfig, text: str | None, name: str) -> list[str]:
    label = data.label_column
    if data.feature_columns is None:
        names = [text] if text is not None else [c for c in columns if c != label]
    else:
        if label in data.feature_columns:
            raise DataRejected(
                f"data.feature_columns lists the label column {label!r}; "
                "a model may not take its own label as input",
                hint="remove it from data.feature_columns in tidal.yaml",
            )
        missing = [c for c in data.feature_columns if c not in columns]
        if missing:
            raise DataRejected(
                f"{_columns(missing)} from data.feature_columns missing in {name}; "
                f"columns found: {', '.join(columns)}",
                hint="fix data.feature_columns in tidal.yaml, or leave it empty to use "
                "every column but the label",
            )
        if text is not None and text not in data.feature_columns:
            raise DataRejected(
                f"data.feature_columns does not list the text column {text!r}",
                hint="add it to data.feature_columns in tidal.yaml, or leave the key empty",
            )
        # keep the file's column order, whatever order the config lists them in
        names = [c for c in columns if c in data.feature_columns]
    if not names:
        raise DataRejected(
            f"{name} has no feature columns: its only column is the label {label!r}",
            hint="a file needs at least one column besides the label",
        )
    return names


def _labels(series: pd.Series, name: str) -> tuple[list[Any], dict[str, float]]:
    column = str(series.name)
    values = natives(series)
    if not values:
        raise DataRejected(
            f"label column {column!r} in {name} is empty",
            hint="every row needs a label; fill the column or set data.label_column",
        )
    fractional = [v for v in values if isinstance(v, float)]
    if fractional:
        raise DataRejected(
            f"label column {column!r} in {name} holds non-whole numbers "
            f"(e.g. {fractional[0]!r}); labels must be classes: integers, strings or booleans",
            hint="Tidal trains classifiers; bin the target into classes before sending the file",
        )
    counts = pd.Series(values).value_counts()
    labels = sorted(counts.index.tolist())
    total = float(counts.sum())
    distribution = {str(v): float(counts[v]) / total for v in labels}
    return labels, distribution


def _columns(names: list[str]) -> str:
    quoted = ", ".join(repr(n) for n in names)
    return f"column {quoted}" if len(names) == 1 else f"columns {quoted}"
