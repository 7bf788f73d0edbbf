"""Decoding request bodies into model rows: the forms accepted, coercion, and error messages."""

from __future__ import annotations

import json
import math

import pytest

from tidal.artifact import Feature
from tidal.errors import InvalidInput
from tidal.serving.inputs import MalformedPayload, decode_csv, decode_json, decode_jsonlines

FEATURES = [
    Feature("size", "number"),
    Feature("rooms", "integer"),
    Feature("garden", "boolean"),
    Feature("city", "string"),
]
ROW = {"size": 70.5, "rooms": 3, "garden": True, "city": "Lyon"}
NUMERIC = [Feature(f"f{i}", "number") for i in range(30)]


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


# -- JSON forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"instances": [ROW]},
        {"inputs": [ROW]},
        ROW,
        [ROW],
        [[70.5, 3, True, "Lyon"]],
        {"instances": [[70.5, 3, True, "Lyon"]]},
    ],
    ids=["instances", "inputs", "one-object", "list", "values", "instances-values"],
)
def test_every_json_form_gives_the_same_row(payload: object) -> None:
    assert decode_json(body(payload), FEATURES) == [ROW]


def test_rows_hold_exactly_the_features_in_model_order() -> None:
    shuffled = {"city": "Lyon", "garden": True, "rooms": 3, "size": 70.5}
    (row,) = decode_json(body(shuffled), FEATURES)
    assert list(row) == ["size", "rooms", "garden", "city"]


def test_several_rows_keep_their_order() -> None:
    rows = decode_json(body([{**ROW, "size": n} for n in (1, 2, 3)]), FEATURES)
    assert [r["size"] for r in rows] == [1.0, 2.0, 3.0]


def test_a_feature_named_like_an_envelope_is_a_feature() -> None:
    features = [Feature("inputs", "number")]
    assert decode_json(body({"inputs": 2}), features) == [{"inputs": 2.0}]


def test_empty_list_is_refused() -> None:
    payload: object
    for payload in ([], {"instances": []}):
        with pytest.raises(InvalidInput, match="no rows"):
            decode_json(body(payload), FEATURES)


def test_malformed_json_names_the_problem() -> None:
    with pytest.raises(MalformedPayload, match="request body is not valid JSON: "):
        decode_json(b'{"size": ', FEATURES)


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedPayload):
        decode_json(b"[" * 100_000 + b"]" * 100_000, FEATURES)


def test_a_scalar_body_or_row_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object or list, got 3"):
        decode_json(b"3", FEATURES)
    with pytest.raises(InvalidInput, match=r"row 1: expected an object .* or a list of 4 values"):
        decode_json(body([ROW, 5]), FEATURES)
    with pytest.raises(InvalidInput, match="'instances' must be a list of rows"):
        decode_json(body({"instances": ROW}), FEATURES)
    with pytest.raises(InvalidInput, match="has 'parameters' beside 'instances'; only 'instances'"):
        decode_json(body({"instances": [ROW], "parameters": {}}), FEATURES)


# -- JSON errors name the row and the feature ------------------------------------------------


def test_missing_features_are_all_named_with_the_expected_list() -> None:
    rows = [ROW, ROW, {"rooms": 2, "garden": False}]
    with pytest.raises(InvalidInput) as err:
        decode_json(body(rows), FEATURES)
    assert str(err.value).startswith("row 2: missing features 'size', 'city'; expected: ")
    assert "size (number), rooms (integer), garden (boolean), city (string)" in str(err.value)


def test_unknown_features_are_named() -> None:
    with pytest.raises(InvalidInput, match=r"unknown features 'foo', 'bar' in row 0; the model"):
        decode_json(body({**ROW, "foo": 1, "bar": 2}), FEATURES)


def test_wrong_number_of_values_lists_the_order() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_json(body([[1, 2, True, "x"], [1, 2, 3]]), FEATURES)
    assert str(err.value) == (
        "row 1: 3 values given, the model takes 4 features in this order: size, rooms, garden, city"
    )


def test_thirty_feature_message_counts_them() -> None:
    with pytest.raises(InvalidInput, match="row 0: 3 values given, the model takes 30 features"):
        decode_json(body([[1, 2, 3]]), NUMERIC)


@pytest.mark.parametrize(
    ("feature", "value", "expected"),
    [
        ("size", "abc", "row 0: feature 'size' must be a number, got 'abc'"),
        ("size", True, "row 0: feature 'size' must be a number, got true"),
        ("size", [1], "row 0: feature 'size' must be a number, got [1]"),
        ("size", "inf", "row 0: feature 'size' must be a finite number, got 'inf'"),
        ("rooms", 2.5, "row 0: feature 'rooms' must be a whole number, got 2.5"),
        ("rooms", False, "row 0: feature 'rooms' must be a whole number, got false"),
        ("garden", "maybe", "row 0: feature 'garden' must be true or false (or 1/0), got 'maybe'"),
        ("garden", 2, "row 0: feature 'garden' must be true or false (or 1/0), got 2"),
        (
            "city",
            75001,
            "row 0: feature 'city' must be a string (put the value in quotes), got 75001",
        ),
    ],
)
def test_type_errors_name_row_feature_and_value(feature: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_json(body({**ROW, feature: value}), FEATURES)
    assert str(err.value) == expected


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_json(body({**ROW, "size": "x" * 500}), FEATURES)
    assert len(str(err.value)) < 120
    assert str(err.value).endswith("…")


# -- coercion ---------------------------------------------------------------------------------


def test_json_coercion() -> None:
    (row,) = decode_json(body({"size": 70, "rooms": 3.0, "garden": 1, "city": "Lyon"}), FEATURES)
    assert row == {"size": 70.0, "rooms": 3, "garden": True, "city": "Lyon"}
    assert type(row["size"]) is float and type(row["rooms"]) is int and row["garden"] is True


def test_numeric_strings_are_numbers() -> None:
    (row,) = decode_json(body({**ROW, "size": "70.5", "rooms": "3"}), FEATURES)
    assert row["size"] == 70.5 and row["rooms"] == 3


def test_null_is_a_missing_value() -> None:
    (row,) = decode_json(
        body({"size": None, "rooms": None, "garden": None, "city": None}), FEATURES
    )
    assert row == {"size": None, "rooms": None, "garden": None, "city": None}


def test_empty_string_stays_a_string_in_json_but_is_not_a_number() -> None:
    (row,) = decode_json(body({**ROW, "city": ""}), FEATURES)
    assert row["city"] == ""
    with pytest.raises(InvalidInput, match="'size' must be a number, got ''"):
        decode_json(body({**ROW, "size": ""}), FEATURES)


# -- CSV --------------------------------------------------------------------------------------


def test_csv_rows_in_feature_order_are_coerced() -> None:
    rows = decode_csv(b"70.5,3,true,Lyon\n12,1,0,Paris\n", FEATURES)
    assert rows == [ROW, {"size": 12.0, "rooms": 1, "garden": False, "city": "Paris"}]


def test_csv_header_is_skipped_and_may_reorder_columns() -> None:
    assert decode_csv(b"size,rooms,garden,city\n70.5,3,TRUE,Lyon\n", FEATURES) == [ROW]
    assert decode_csv(b"city,size,garden,rooms\r\nLyon,70.5,1,3\r\n", FEATURES) == [ROW]


def test_csv_empty_cells_are_missing_values() -> None:
    (row,) = decode_csv(b",,,\n", FEATURES)
    assert row == {"size": None, "rooms": None, "garden": None, "city": None}


def test_csv_quotes_and_blank_lines() -> None:
    rows = decode_csv(b'1,2,false,"Saint-Denis, Paris"\n\n', FEATURES)
    assert rows[0]["city"] == "Saint-Denis, Paris" and len(rows) == 1


def test_csv_errors_name_row_and_line() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_csv(b"size,rooms,garden,city\n1,2,true,a\n1,abc,true,b\n", FEATURES)
    assert str(err.value) == "row 1 (line 3): feature 'rooms' must be a whole number, got 'abc'"
    with pytest.raises(InvalidInput, match=r"row 0 \(line 1\): 2 values given, the model takes 4"):
        decode_csv(b"1,2\n", FEATURES)


def test_csv_header_that_does_not_match_says_how() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_csv(b"size,rooms,pool\n1,2,3\n", FEATURES)
    message = str(err.value)
    assert message.startswith("the CSV header does not match the model's features")
    assert "missing 'garden', 'city'" in message and "unknown 'pool'" in message


def test_csv_needs_rows() -> None:
    with pytest.raises(InvalidInput, match="no rows"):
        decode_csv(b"\n", FEATURES)
    with pytest.raises(InvalidInput, match="no rows"):
        decode_csv(b"size,rooms,garden,city\n", FEATURES)


def test_csv_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="not valid UTF-8"):
        decode_csv(b"\xff\xfe1,2\n", FEATURES)


def test_csv_nan_is_a_missing_number() -> None:
    (row,) = decode_csv(b"nan,1,1,x\n", FEATURES)
    assert math.isnan(row["size"])


# -- JSON Lines -------------------------------------------------------------------------------


def test_jsonlines_objects_and_lists() -> None:
    text = json.dumps(ROW) + "\n\n" + json.dumps([70.5, 3, True, "Lyon"]) + "\n"
    assert decode_jsonlines(text.encode(), FEATURES) == [ROW, ROW]


def test_jsonlines_errors_name_the_line() -> None:
    with pytest.raises(MalformedPayload, match="line 2 is not valid JSON"):
        decode_jsonlines(body(ROW) + b"\n{oops\n", FEATURES)
    bad = body(ROW) + b"\n\n" + body({**ROW, "size": "big"})
    with pytest.raises(InvalidInput, match=r"row 1 \(line 3\): feature 'size' must be a number"):
        decode_jsonlines(bad, FEATURES)
    with pytest.raises(InvalidInput, match="no rows"):
        decode_jsonlines(b"\n \n", FEATURES)


# -- speed ------------------------------------------------------------------------------------


def test_one_row_decode_is_fast() -> None:
    import time

    payload = body({f.name: float(i) for i, f in enumerate(NUMERIC)})
    decode_json(payload, NUMERIC)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            decode_json(payload, NUMERIC)
        best = min(best, (time.perf_counter() - start) / 200)
    assert best < 100e-6, f"one-row decode took {best * 1e6:.0f} µs"


# -- single-feature (text) models -------------------------------------------------------------

TEXT = [Feature("text", "string")]


@pytest.mark.parametrize(
    "payload",
    [
        {"inputs": ["a", "b"]},
        {"instances": ["a", "b"]},
        ["a", "b"],
        [{"text": "a"}, {"text": "b"}],
        {"instances": [{"text": "a"}, ["b"]]},
    ],
    ids=["inputs", "instances", "list", "objects", "mixed"],
)
def test_text_model_takes_bare_strings_as_rows(payload: object) -> None:
    assert decode_json(body(payload), TEXT) == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize(
    "payload", ["a great movie", {"inputs": "a great movie"}, {"text": "a great movie"}]
)
def test_text_model_takes_one_bare_string_as_one_row(payload: object) -> None:
    assert decode_json(body(payload), TEXT) == [{"text": "a great movie"}]


def test_text_model_keeps_text_exactly() -> None:
    text = 'He said "no", twice —\nthen left. ß'
    assert decode_json(body([text]), TEXT) == [{"text": text}]
    assert decode_jsonlines(body(text), TEXT) == [{"text": text}]


def test_text_model_refuses_numbers_and_empty_envelopes() -> None:
    with pytest.raises(InvalidInput, match=r"row 1: feature 'text' must be a string .*got 5"):
        decode_json(body(["fine", 5]), TEXT)
    with pytest.raises(InvalidInput, match="row 0: feature 'text' must be a string"):
        decode_json(b"3", TEXT)
    with pytest.raises(InvalidInput, match="no rows"):
        decode_json(body({"inputs": []}), TEXT)
    with pytest.raises(InvalidInput, match="must be a JSON object or list, got null"):
        decode_json(b"null", TEXT)
    with pytest.raises(InvalidInput, match="'inputs' must be a list of rows"):
        decode_json(body({"inputs": {"text": "a"}}), TEXT)


def test_text_model_null_in_a_list_is_a_missing_value() -> None:
    assert decode_json(body(["a", None]), TEXT) == [{"text": "a"}, {"text": None}]


def test_a_number_model_with_one_feature_takes_bare_numbers() -> None:
    assert decode_json(b"[1, 2.5]", [Feature("x", "number")]) == [{"x": 1.0}, {"x": 2.5}]


def test_a_bare_string_for_a_model_of_several_features_says_what_it_takes() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_json(body(["a great movie"]), FEATURES)
    message = str(err.value)
    assert message.startswith("row 0: a bare string ('a great movie') is read as the only")
    assert "this model takes 4 features: size (number), rooms (integer)" in message
    with pytest.raises(InvalidInput, match=r"got 'a' .*; a bare value is a row only for single"):
        decode_json(body("a"), FEATURES)
    with pytest.raises(InvalidInput, match="'inputs' must be a list of rows"):
        decode_json(body({"inputs": "a"}), FEATURES)


def test_text_csv_one_quoted_text_per_line() -> None:
    csv_body = b'"a moving, beautifully acted film"\nplain words\n"say ""hi"""\n'
    assert decode_csv(csv_body, TEXT) == [
        {"text": "a moving, beautifully acted film"},
        {"text": "plain words"},
        {"text": 'say "hi"'},
    ]


def test_text_csv_header_and_multiline_text() -> None:
    assert decode_csv(b'text\n"two\nlines"\n', TEXT) == [{"text": "two\nlines"}]


def test_text_csv_with_an_unquoted_comma_says_to_quote() -> None:
    with pytest.raises(InvalidInput) as err:
        decode_csv(b"a moving, beautifully acted film\n", TEXT)
    message = str(err.value)
    assert message.startswith("row 0 (line 1): 2 values given, the model takes 1 feature: text")
    assert "in double quotes" in message


def test_text_jsonlines_strings_and_objects() -> None:
    lines = b'"a"\n{"text": "b"}\n\n["c"]\n'
    assert decode_jsonlines(lines, TEXT) == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    with pytest.raises(InvalidInput, match=r"row 0 \(line 1\): a bare string"):
        decode_jsonlines(b'"a"\n', FEATURES)


def test_text_list_of_values_of_the_wrong_length() -> None:
    with pytest.raises(
        InvalidInput, match="row 0: 2 values given, the model takes 1 feature: text"
    ):
        decode_json(body([["a", "b"]]), TEXT)


@pytest.mark.parametrize("depth", [255, 960, 1000, 1021, 1023])
def test_json_nested_past_max_depth_is_malformed_not_a_crash(depth: int) -> None:
    from tidal.serving.inputs import MAX_DEPTH, parse_json

    assert depth > MAX_DEPTH
    body = ("[" * depth + "]" * depth).encode()
    with pytest.raises(MalformedPayload, match=r"levels deep|not valid JSON"):
        decode_json(
            b'{"x": ' + body + b', "y": 1}', [Feature("x", "number"), Feature("y", "number")]
        )
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None  # the limit itself: fine


def test_the_depth_walk_needs_no_recursion() -> None:
    from tidal.serving.inputs import _depth

    deep: list[object] = []
    for _ in range(5000):
        deep = [deep, 1]
    assert _depth(deep) > 254 and _depth([{"a": [1]}, 2]) == 3
