from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tidal.data.prepare import cap_share, dataset_version, drop_known, from_jsonl, split, to_jsonl
from tidal.errors import UsageError
from tidal.storage import sha256_bytes


def labelled(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"x": range(len(labels)), "y": labels})


def test_stratified_split_keeps_class_ratios() -> None:
    data = labelled({"a": 60, "b": 30, "c": 10})

    rest, cut = split(data, 0.2, label_column="y", seed=1)

    assert len(cut) == 20 and len(rest) == 80
    assert cut["y"].value_counts().to_dict() == {"a": 12, "b": 6, "c": 2}
    assert rest["y"].value_counts().to_dict() == {"a": 48, "b": 24, "c": 8}
    assert sorted([*rest["x"], *cut["x"]]) == list(range(100))  # a partition, no row twice
    assert list(cut.index) == list(range(20))


def test_split_is_deterministic_per_seed() -> None:
    data = labelled({"a": 50, "b": 50})

    first = split(data, 0.3, label_column="y", seed=7)[1]
    again = split(data, 0.3, label_column="y", seed=7)[1]
    other = split(data, 0.3, label_column="y", seed=8)[1]

    pd.testing.assert_frame_equal(first, again)
    assert list(first["x"]) != list(other["x"])


def test_singleton_class_falls_back_to_random_split() -> None:
    data = labelled({"a": 9, "b": 1})

    rest, cut = split(data, 0.2, label_column="y", seed=0)

    assert len(cut) == 2 and len(rest) == 8


def test_split_of_tiny_frames_leaves_both_parts_a_row() -> None:
    rest, cut = split(labelled({"a": 1, "b": 1}), 0.1, label_column="y", seed=0)
    assert len(rest) == 1 and len(cut) == 1

    rest, cut = split(labelled({"a": 2, "b": 1}), 0.8, label_column="y", seed=0)
    assert len(rest) == 1 and len(cut) == 2

    rest, cut = split(labelled({"a": 1}), 0.2, label_column="y", seed=0)
    assert len(rest) == 1 and cut.empty


def test_stratified_split_leaves_each_class_in_the_rest_when_possible() -> None:
    data = labelled({"a": 2, "b": 2, "c": 6})

    rest, _ = split(data, 0.6, label_column="y", seed=3)

    assert set(rest["y"]) == {"a", "b", "c"}


def test_dataset_version() -> None:
    digest = sha256_bytes(b"rows")

    assert dataset_version(digest) == "ds-" + digest[:12]
    with pytest.raises(UsageError, match="not a sha256"):
        dataset_version("not-hex")


def test_jsonl_round_trips_types_and_missing_values() -> None:
    data = pd.DataFrame(
        {
            "n": [1, 2, 3],
            "f": [1.0, np.nan, 2.5],
            "whole": [1.0, 2.0, 3.0],
            "s": ["007", None, "café"],
            "b": [True, False, True],
        }
    )

    raw = to_jsonl(data)
    back = from_jsonl(raw)

    assert raw.decode("utf-8").splitlines()[1] == (
        '{"n": 2, "f": null, "whole": 2.0, "s": null, "b": false}'
    )
    assert "café" in raw.decode("utf-8")  # UTF-8, not \\u escapes
    pd.testing.assert_frame_equal(back, data)
    assert back["s"].iloc[0] == "007"  # a string stays a string


def test_rows_with_the_features_of_holdout_rows_are_dropped() -> None:
    holdout = pd.DataFrame({"x": [1, 2, 3], "c": ["a", "b", "c"], "label": ["p", "n", "p"]})
    # x read as float in one file and int in the other; labels differ: still the same rows
    frame = pd.DataFrame({"x": [1.0, 2.0, 9.0], "c": ["a", "z", "c"], "label": ["n", "n", "p"]})
    kept, dropped = drop_known(frame, holdout, ["x", "c"])
    assert dropped == 1 and kept["x"].tolist() == [2.0, 9.0]
    assert drop_known(frame, holdout.iloc[:0], ["x", "c"])[1] == 0


def test_one_file_is_capped_at_its_share_of_the_accumulated_set() -> None:
    frame = pd.DataFrame({"x": range(300), "label": ["a", "b", "b"] * 100})
    capped, dropped = cap_share(frame, 100, 0.5, label_column="label", seed=0)
    assert (len(capped), dropped) == (100, 200)  # 100 of 100 + 100: one half
    assert capped["label"].value_counts().to_dict() == {"b": 67, "a": 33}  # stratified
    assert cap_share(frame, 0, 0.5, label_column="label", seed=0)[1] == 0  # the first file
    assert cap_share(frame, 400, 0.5, label_column="label", seed=0)[1] == 0  # within its share
    assert len(cap_share(frame, 100, 0.75, label_column="label", seed=0)[0]) == 300
