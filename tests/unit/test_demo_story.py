"""The demo's printed story never contradicts itself: a version that passed the gate while a
champion serves is registered and rolled out, not yet the champion."""

from __future__ import annotations

from typing import Any

from tidal.demo import _row, _say_record


def told(record: dict[str, Any], **kwargs: Any) -> str:
    lines: list[str] = []
    _say_record(lambda line, **_: lines.append(line), record, None, **kwargs)
    return "\n".join(lines)


def test_a_gated_version_going_out_as_a_canary_is_not_called_promoted() -> None:
    record = {"decision": "promoted", "version": "4", "champion": "2", "reasons": []}

    said = told(record, rollout="canary")

    assert "registered v4" in said and "gate passed" in said
    assert "canary starting, champion stays v2 until it completes" in said
    assert "promoted v4" not in said


def test_a_version_promoted_at_once_is_the_champion() -> None:
    said = told({"decision": "promoted", "version": "1", "champion": "1", "reasons": []})

    assert "promoted[/] v1, champion v1" in said


def test_the_summary_row_says_how_the_canary_ended() -> None:
    record = {"decision": "promoted", "version": "4", "champion": "2"}

    assert _row("retrain.jsonl", record, None)["decision"] == "promoted"
    rolled = _row("retrain.jsonl", record | {"rollout_status": "rolled_back"}, None)
    assert rolled["decision"] == "canary rolled_back"
