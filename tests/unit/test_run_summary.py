"""The run's one-line summary (events, logs) never calls a version the champion before it is."""

from __future__ import annotations

from tidal.pipeline import _summary


def test_a_promotion_through_a_rollout_says_the_champion_stays() -> None:
    record = {
        "run_id": 7,
        "decision": "promoted",
        "version": "4",
        "champion": "2",
        "rollout": {"id": 3, "strategy": "canary"},
    }
    text = _summary(record)
    assert "rollout 3 (canary) started" in text
    assert "v2 serves until it completes" in text
    assert "deployed" not in text


def test_an_all_at_once_promotion_is_deployed() -> None:
    record = {"run_id": 7, "decision": "promoted", "version": "4", "champion": "4"}
    assert _summary(record) == "run 7: v4 promoted and deployed"
