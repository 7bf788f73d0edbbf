"""The report's y axes: round steps and labels that never repeat."""

from __future__ import annotations

import re

import pytest

from tidal.monitoring.report import Series, _nice_max, axis_ticks, line_svg


@pytest.mark.parametrize("top", [0.004, 0.03, 0.12, 0.21, 0.26, 0.9, 1.7, 2.2, 3.7, 14, 47, 730])
def test_tick_labels_are_distinct_round_and_within_the_axis(top: float) -> None:
    ymax = _nice_max(top * 1.15)
    ticks = axis_ticks(ymax)
    labels = [label for _, label in ticks]

    assert len(set(labels)) == len(labels), labels
    assert 3 <= len(ticks) <= 7, labels
    assert ticks[0] == (0.0, labels[0]) and float(labels[0]) == 0
    assert ticks[-1][0] <= ymax * (1 + 1e-9)
    for value, label in ticks:
        assert float(label) == pytest.approx(value, abs=1e-12), (value, label)


def test_a_psi_chart_near_0_2_labels_its_axis_without_repeats() -> None:
    points = [(1_700_000_000.0 + 600 * i, psi, "") for i, psi in enumerate([0.08, 0.19, 0.21])]

    svg = line_svg("drift", "PSI", [Series("v1", "#000", points)], threshold=(0.2, "PSI 0.2"))

    labels = re.findall(r'text-anchor="end"[^>]*>([0-9.]+)</text>', svg)
    assert labels == ["0.00", "0.05", "0.10", "0.15", "0.20", "0.25"]
