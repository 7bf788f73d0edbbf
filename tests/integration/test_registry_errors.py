"""MLflow's refusals are permanent and end the MLflow run; a failed Tidal run closes its own.

Real MLflow on SQLite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.errors import RetryableError, TidalError
from tidal.registry import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlruns", "m", tmp_path / "lock"
    )


def test_a_request_mlflow_refuses_is_permanent_and_closes_its_run(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    with pytest.raises(TidalError) as caught:
        registry.register(
            run_id=7,
            model_dir=tmp_path / "model",
            params={},
            metrics={"candidate.test:batch (1).csv.accuracy": 0.9},  # unescaped: refused
            tags={},
            record={"decision": "promoted"},
        )
    assert not isinstance(caught.value, RetryableError)  # a retry would meet the same refusal
    assert "MLflow refused" in str(caught.value)
    (run,) = registry.client.search_runs([registry._experiment_id or ""])
    assert run.info.status == "FAILED"
    assert registry.find_by_run(7) is None


def test_close_run_ends_an_open_mlflow_run_once(registry: Registry) -> None:
    registry.log_training(3, {"loss (smoothed)": 0.5}, step=1)  # opens the run, as training does
    (run,) = registry.client.search_runs([registry._experiment_id or ""])
    assert run.info.status == "RUNNING"
    assert "train.loss_20_28smoothed_29" in registry.client.get_run(run.info.run_id).data.metrics
    registry.close_run(3, failed=True)
    registry.close_run(3, failed=False)  # already ended: left as it is
    assert registry.client.get_run(run.info.run_id).info.status == "FAILED"
    registry.close_run(4, failed=True)  # never opened: nothing to do
