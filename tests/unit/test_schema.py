from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from tidal.artifact import Feature
from tidal.config import DataConfig
from tidal.data.schema import Schema, infer_schema
from tidal.errors import DataRejected


def config(**values: Any) -> DataConfig:
    return DataConfig.model_validate(values)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [31, 45, 27, 52],
            "income": [1.5, 2.0, np.nan, 3.25],
            "visits": [1.0, 2.0, np.nan, 4.0],  # whole floats (an integer column with a gap)
            "member": [True, False, True, True],
            "city": ["Oslo", "Lima", None, "Oslo"],
            "label": ["yes", "no", "yes", "yes"],
        }
    )


def test_infer_types_labels_and_distribution() -> None:
    schema = infer_schema(frame(), config())

    assert schema.label_column == "label"
    assert schema.features == [
        Feature("age", "integer"),
        Feature("income", "number"),
        Feature("visits", "number"),
        Feature("member", "boolean"),
        Feature("city", "string"),
    ]
    assert schema.labels == ["no", "yes"]
    assert schema.label_distribution == {"no": 0.25, "yes": 0.75}
    assert schema.rows == 4
    assert schema.text_column is None


def test_whole_float_labels_become_ints() -> None:
    data = pd.DataFrame({"x": [1, 2, 3, 4], "y": [1.0, 0.0, 1.0, np.nan]})

    schema = infer_schema(data, config(label_column="y"))

    assert schema.labels == [0, 1]
    assert all(type(v) is int for v in schema.labels)
    assert schema.label_distribution == pytest.approx({"0": 1 / 3, "1": 2 / 3})


def test_fractional_labels_are_refused() -> None:
    data = pd.DataFrame({"x": [1, 2], "y": [0.5, 1.25]})

    with pytest.raises(DataRejected, match=r"non-whole numbers.*0\.5"):
        infer_schema(data, config(label_column="y"))


def test_missing_label_column_names_columns_and_config_key() -> None:
    with pytest.raises(DataRejected) as info:
        infer_schema(frame(), config(label_column="target"), name="incoming/a.csv")

    message = str(info.value)
    assert "'target' missing in incoming/a.csv" in message
    assert "columns found: age, income, visits, member, city, label" in message
    assert "data.label_column" in message


def test_feature_columns_from_config_keep_file_order() -> None:
    schema = infer_schema(frame(), config(feature_columns=["city", "age"]))

    assert schema.feature_names == ["age", "city"]


def test_configured_feature_column_must_exist() -> None:
    with pytest.raises(DataRejected, match=r"column 'height' from data.feature_columns missing"):
        infer_schema(frame(), config(feature_columns=["age", "height"]))


def test_label_may_not_be_a_feature() -> None:
    with pytest.raises(DataRejected, match="lists the label column 'label'"):
        infer_schema(frame(), config(feature_columns=["age", "label"]))


def test_text_task_uses_the_text_column_typed_string() -> None:
    data = pd.DataFrame({"id": [1, 2], "body": [10, 20], "label": ["a", "b"]})

    schema = infer_schema(data, config(task="text", text_column="body"))

    assert schema.text_column == "body"
    assert schema.features == [Feature("body", "string")]  # numeric-looking, still text


def test_text_task_without_text_column_is_refused() -> None:
    data = pd.DataFrame({"body": ["x", "y"], "label": ["a", "b"]})

    with pytest.raises(DataRejected, match=r"data\.text_column"):
        infer_schema(data, config(task="text"))


def test_json_round_trip() -> None:
    schema = infer_schema(frame(), config())

    again = Schema.from_json(schema.to_json())

    assert again == schema
    assert again.features[0] == Feature("age", "integer")
