from __future__ import annotations

import pandas as pd
import pytest

from tidal.config import Config
from tidal.data.schema import Schema, infer_schema
from tidal.data.validate import check, coerce, read_table, validate
from tidal.errors import DataRejected

NAME = "incoming/batch-3.csv"


def config(**validation: object) -> Config:
    return Config.model_validate(
        {"data": {"label_column": "target"}, "validation": {"min_rows": 4, **validation}}
    )


def table(rows: int = 8) -> pd.DataFrame:
    """A clean toy file: two features and a balanced 0/1 label."""
    return pd.DataFrame(
        {
            "a": list(range(rows)),
            "b": [i / 4 for i in range(rows)],
            "target": [i % 2 for i in range(rows)],
        }
    )


def schema() -> Schema:
    return infer_schema(table(), config().data)


# -- reading --------------------------------------------------------------------------------


def test_read_csv_and_tsv() -> None:
    frame = read_table(b"a,b,target\n1,x,0\n2,y,1\n", "f.csv")
    assert frame.to_dict("list") == {"a": [1, 2], "b": ["x", "y"], "target": [0, 1]}

    frame = read_table(b"a\tb\n1\tx, y\n", "f.tsv")
    assert frame["b"].tolist() == ["x, y"]


def test_read_csv_with_utf8_bom() -> None:
    frame = read_table("\ufeffname,target\ncafé,1\n".encode(), "f.csv")
    assert list(frame.columns) == ["name", "target"]


def test_read_jsonl_and_json_array() -> None:
    lines = b'{"a": 1, "target": "x"}\n\n{"a": 2.5, "target": "y"}\n'
    frame = read_table(lines, "f.jsonl")
    assert frame.to_dict("list") == {"a": [1.0, 2.5], "target": ["x", "y"]}

    frame = read_table(b'[{"a": 1}, {"a": 2}]', "f.json")
    assert frame["a"].tolist() == [1, 2]


def test_non_utf8_bytes_are_rejected_with_offset() -> None:
    data = b"a,target\n" + "é,1\n".encode("latin-1")

    with pytest.raises(DataRejected) as info:
        read_table(data, NAME)

    assert "not UTF-8: byte 9 (line 2)" in str(info.value)
    assert "re-save the file as UTF-8" in str(info.value)


def test_unknown_extension_lists_allowed_ones() -> None:
    with pytest.raises(DataRejected, match=r"'\.xlsx'; allowed: \.csv, \.tsv, \.jsonl"):
        read_table(b"a,b\n1,2\n", "data.xlsx")


@pytest.mark.parametrize("data", [b"", b"  \n\n"])
def test_empty_file_is_rejected(data: bytes) -> None:
    with pytest.raises(DataRejected, match="is empty"):
        read_table(data, NAME)


def test_header_only_csv_is_rejected() -> None:
    with pytest.raises(DataRejected, match="header but no rows"):
        read_table(b"a,b,target\n", NAME)


def test_ragged_csv_names_the_line() -> None:
    with pytest.raises(DataRejected, match=r"not valid CSV at line 3: Expected 2 fields"):
        read_table(b"a,b\n1,2\n3,4,5\n", NAME)


def test_duplicate_header_is_rejected() -> None:
    with pytest.raises(DataRejected, match="names 'a' more than once"):
        read_table(b"a,b,a\n1,2,3\n", NAME)


def test_bad_json_line_is_named() -> None:
    data = b'{"a": 1}\n{"a": 2}\n{"a": 3,}\n{"a": 4}\n'

    with pytest.raises(DataRejected, match=r"line 3 of f\.jsonl is not valid JSON"):
        read_table(data, "f.jsonl")


def test_json_line_must_be_an_object() -> None:
    with pytest.raises(DataRejected, match=r"line 2 of f\.ndjson is a JSON array, not an object"):
        read_table(b'{"a": 1}\n[1, 2]\n', "f.ndjson")


def test_nested_json_value_is_rejected() -> None:
    with pytest.raises(DataRejected, match=r"line 1 .* nested object or array in 'a'"):
        read_table(b'{"a": {"b": 1}}\n', "f.jsonl")


# -- validating -----------------------------------------------------------------------------


def test_clean_file_passes_with_and_without_schema() -> None:
    assert validate(table(), None, config(), name=NAME).ok
    report = validate(table(), schema(), config(), name=NAME)

    assert report.ok and report.problems == [] and report.warnings == []
    assert report.to_dict() == {
        "ok": True,
        "rows": 8,
        "columns": ["a", "b", "target"],
        "problems": [],
        "warnings": [],
    }


def test_too_few_rows() -> None:
    report = validate(table(3), None, config(), name=NAME)

    assert not report.ok
    assert report.problems == [
        f"{NAME} has 3 rows; at least 4 are required "
        "(send a larger file, or lower validation.min_rows in tidal.yaml)"
    ]


def test_first_file_without_label_column() -> None:
    report = validate(table().drop(columns="target"), None, config(), name=NAME)

    assert not report.ok
    assert "'target' missing in incoming/batch-3.csv" in report.problems[0]
    assert "data.label_column" in report.problems[0]


def test_first_file_with_a_single_class() -> None:
    frame = table().assign(target=1)

    report = validate(frame, None, config(), name=NAME)

    assert any("single class (1)" in p for p in report.problems)


def test_missing_label_column_message() -> None:
    report = validate(table().drop(columns="target"), schema(), config(), name=NAME)

    assert report.problems == [
        "column 'target' missing in incoming/batch-3.csv; expected columns: a, b, target "
        "(set data.label_column in tidal.yaml to use another name)"
    ]


def test_missing_features_and_extra_columns() -> None:
    frame = table().drop(columns=["a", "b"]).assign(note="x")

    report = validate(frame, schema(), config(), name=NAME)

    assert report.problems == [
        "columns 'a', 'b' missing in incoming/batch-3.csv; expected columns: a, b, target "
        "(rename the columns in the file, or set data.feature_columns in tidal.yaml)"
    ]
    assert len(report.warnings) == 1 and "'note'" in report.warnings[0]


def test_non_numeric_values_are_reported_with_rows() -> None:
    frame = table().astype({"b": object})
    frame.loc[[1, 4, 5, 6], "b"] = ["abc", "n/a?", "1,5", "x"]

    report = validate(frame, schema(), config(), name=NAME)

    assert report.problems == [
        "column 'b' in incoming/batch-3.csv has 4 non-numeric values (row 2: 'abc', "
        "row 5: 'n/a?', row 6: '1,5'); expected numbers as in the first accepted file "
        "(fix the values, or leave the cells empty)"
    ]


def test_integer_column_accepts_whole_floats_and_numeric_strings() -> None:
    frame = table().astype({"a": object})
    frame["a"] = [0.0, "1", 2, " 3 ", 4.0, 5, 6, 7]
    assert validate(frame, schema(), config(), name=NAME).ok

    frame.loc[2, "a"] = 2.5
    report = validate(frame, schema(), config(), name=NAME)
    assert report.problems == [
        "column 'a' in incoming/batch-3.csv has 1 fractional value (row 3: 2.5); expected "
        "integers as in the first accepted file (round the values, or leave the cells empty)"
    ]


def test_labels_as_strings_match_integer_labels() -> None:
    frame = table().assign(target=[str(i % 2) for i in range(8)])

    assert validate(frame, schema(), config(), name=NAME).ok


def test_unknown_labels() -> None:
    frame = table().assign(target=[0, 1, 0, 1, 0, 1, 2, 3])

    report = validate(frame, schema(), config(max_label_shift=1.0), name=NAME)

    assert report.problems == [
        "label column 'target' in incoming/batch-3.csv holds labels the first accepted file did "
        "not have: 2, 3 (2 rows); allowed labels: 0, 1 (fix the labels, or set "
        "validation.allow_new_labels: true in tidal.yaml)"
    ]
    allowed = validate(frame, schema(), config(max_label_shift=1, allow_new_labels=True), name=NAME)
    assert allowed.ok and "new labels 2, 3" in allowed.warnings[0]


def test_label_distribution_shift_is_detected() -> None:
    frame = table().assign(target=[1, 1, 1, 1, 1, 1, 1, 0])

    report = validate(frame, schema(), config(), name=NAME)

    assert report.problems == [
        "the label distribution of incoming/batch-3.csv (0: 12.5%, 1: 87.5%) differs from the "
        "first accepted file's (0: 50%, 1: 50%) by 0.38 (total variation distance); at most "
        "0.30 is allowed (check the file comes from the same source, or raise "
        "validation.max_label_shift in tidal.yaml)"
    ]
    assert validate(frame, schema(), config(max_label_shift=0.4), name=NAME).ok


def test_missing_values_over_the_limit() -> None:
    frame = table().astype({"b": "float64"})
    frame.loc[[0, 3], "b"] = float("nan")

    report = validate(frame, schema(), config(max_missing_rate=0.2), name=NAME)

    assert report.problems == [
        "column 'b' in incoming/batch-3.csv is 25% empty (2 of 8 rows); at most 20% is allowed "
        "(fill the gaps, or raise validation.max_missing_rate in tidal.yaml)"
    ]
    assert validate(frame, schema(), config(max_missing_rate=0.25), name=NAME).ok


def test_any_missing_label_is_a_problem() -> None:
    frame = table().astype({"target": "float64"})
    frame.loc[5, "target"] = float("nan")

    report = validate(frame, schema(), config(max_missing_rate=1.0), name=NAME)

    assert any("is empty in 1 row (row 6); every row needs a label" in p for p in report.problems)


def test_duplicate_rows_over_the_limit() -> None:
    frame = pd.concat([table(4)] * 3, ignore_index=True)  # 8 of 12 rows are copies

    report = validate(frame, None, config(max_duplicate_rate=0.5), name=NAME)

    assert report.problems == [
        "incoming/batch-3.csv repeats 8 of its 12 rows (66.7%); at most 50% may be duplicates "
        "(remove the copies, or raise validation.max_duplicate_rate in tidal.yaml)"
    ]


def test_every_problem_is_collected() -> None:
    frame = table(3).drop(columns="a").assign(target=[5, 5, 5])

    report = validate(frame, schema(), config(), name=NAME)

    kinds = ["has 3 rows", "column 'a' missing", "labels the first", "label distribution"]
    assert len(report.problems) == len(kinds)
    for kind, problem in zip(kinds, report.problems, strict=True):
        assert kind in problem


def test_check_raises_with_every_problem() -> None:
    frame = table(3).drop(columns="a")

    with pytest.raises(DataRejected) as info:
        check(frame, schema(), config(), name=NAME)

    assert len(info.value.problems) == 2
    assert "failed validation with 2 problems" in info.value.message
    assert info.value.hint is not None
    assert check(table(), schema(), config(), name=NAME).ok


# -- converting -----------------------------------------------------------------------------


def test_coerce_to_schema_columns_and_types() -> None:
    raw = read_table(
        b'{"note": "x", "target": "1", "b": "0.5", "a": 3.0}\n'
        b'{"note": "y", "target": "0", "b": 2, "a": "4"}\n',
        "f.jsonl",
    )

    frame = coerce(raw, schema())

    assert list(frame.columns) == ["a", "b", "target"]
    assert frame.dtypes.astype(str).to_dict() == {"a": "int64", "b": "float64", "target": "int64"}
    assert frame.to_dict("list") == {"a": [3, 4], "b": [0.5, 2.0], "target": [1, 0]}
