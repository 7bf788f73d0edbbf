"""MLflow metric names built from user file names: accepted, stable, one-to-one."""

from __future__ import annotations

from tidal.registry import metric_key

NAMES = ["batch (1).csv", "Prüfung-März.csv", "données 🙂.csv", "a_b.csv", "a b.csv", "a:b/c"]


def test_metric_keys_are_accepted_by_mlflow_stable_and_distinct() -> None:
    from mlflow.utils.validation import _validate_metric_name

    keys = [metric_key(f"test:{name}") for name in NAMES]
    for key in keys:
        _validate_metric_name(f"candidate.{key}.accuracy")  # raises on a name MLflow refuses
    assert len(set(keys)) == len(keys)
    assert metric_key("test:batch (1).csv") == "test:batch_20_281_29.csv"
    assert metric_key("test:batch-2.csv") == "test:batch-2.csv"  # plain names keep their key
    # one-to-one: a name that looks like an escape is escaped itself
    assert metric_key("a_20b") != metric_key("a b") == "a_20b"
