"""Rollout alarms: windows of endpoint snapshots, histogram quantiles, verdicts and A/B readouts."""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.stats import norm

from tidal.errors import ConfigError, TidalError
from tidal.rollout.alarms import (
    Alarm,
    AlarmConfig,
    AlarmState,
    Snapshot,
    Verdict,
    Window,
    ab_readout,
    conclusive,
    evaluate,
    firing,
    supported_quantile,
    window_from,
)
from tidal.serving.metrics import LATENCY_BUCKETS

BOUNDS = LATENCY_BUCKETS


def binned(latencies: Sequence[float]) -> tuple[int, ...]:
    """Latencies counted into BOUNDS the way the endpoint's histogram does (``le`` inclusive)."""
    counts = [0] * (len(BOUNDS) + 1)
    for seconds in latencies:
        counts[bisect_left(BOUNDS, seconds)] += 1
    return tuple(counts)


def window(
    requests: int,
    errors: int = 0,
    latency: float | Sequence[float] = 0.01,
    labels: dict[str, int] | None = None,
) -> Window:
    latencies = [latency] * requests if isinstance(latency, float) else latency
    return Window(requests, errors, BOUNDS, binned(latencies), labels or {})


def snap(
    t: float, requests: int, errors: int = 0, labels: dict[str, int] | None = None
) -> Snapshot:
    return Snapshot(t, requests, errors, BOUNDS, binned([0.01] * requests), labels or {})


def by_name(verdicts: list[Verdict], name: Alarm) -> Verdict:
    (verdict,) = [v for v in verdicts if v.name == name]
    return verdict


# -- snapshots and windows ----------------------------------------------------------------------


def test_snapshot_round_trips_through_the_endpoint_dict() -> None:
    data = {
        "t": 1700000000.5,
        "requests": 3,
        "errors": 1,
        "latency": {"bounds": list(BOUNDS), "counts": list(binned([0.003, 0.02, 20.0]))},
        "labels": {"spam": 2, "ham": 1},
    }
    snapshot = Snapshot.from_dict(data)

    assert snapshot.counts[bisect_left(BOUNDS, 0.003)] == 1 and snapshot.counts[-1] == 1
    assert snapshot.to_dict() == data
    assert json.loads(json.dumps(snapshot.to_dict())) == data


@pytest.mark.parametrize(
    "data",
    [
        {"t": 1, "requests": 1, "errors": 0},  # no latency
        {"t": 1, "requests": "many", "errors": 0, "latency": {"bounds": [1], "counts": [0, 0]}},
        {"t": 1, "requests": 1, "errors": 0, "latency": {"bounds": [1, 2], "counts": [1, 0]}},
    ],
)
def test_a_malformed_snapshot_is_refused_with_the_expected_shape(data: dict) -> None:
    with pytest.raises(TidalError, match="latency"):
        Snapshot.from_dict(data)


def test_window_between_two_snapshots_is_their_difference() -> None:
    older = Snapshot(10.0, 100, 2, BOUNDS, binned([0.01] * 100), {"spam": 60, "ham": 40})
    newer = Snapshot(
        70.0, 250, 5, BOUNDS, binned([0.01] * 100 + [0.2] * 150), {"spam": 60, "ham": 190}
    )

    w = Window.between(older, newer)

    assert (w.requests, w.errors) == (150, 3)
    assert w.counts == binned([0.2] * 150)
    assert w.labels == {"ham": 150}  # spam did not move: no zero entries
    assert w.error_rate == pytest.approx(0.02)
    assert w.label_shares == {"ham": 1.0}


@pytest.mark.parametrize(
    "older",
    [
        snap(10, 500, 1),  # requests went down
        snap(10, 100, 9),  # errors went down
        snap(10, 100, 0, {"spam": 80}),  # a label count went down
        snap(10, 100, 0, {"other": 1}),  # a label vanished
        Snapshot(10, 100, 0, (0.1, 1.0), (100, 0, 0), {}),  # other bucket bounds
    ],
)
def test_a_counter_going_down_means_a_restart_and_the_newer_snapshot_is_the_window(
    older: Snapshot,
) -> None:
    newer = snap(20, 200, 3, {"spam": 50, "ham": 150})

    w = Window.between(older, newer)

    assert (w.requests, w.errors, w.counts, dict(w.labels)) == (
        200, 3, newer.counts, {"spam": 50, "ham": 150},
    )  # fmt: skip


def test_window_from_takes_the_last_seconds_or_everything_it_has() -> None:
    snapshots = [snap(float(t), 10 * t) for t in range(100, 111)]  # 10 requests a second

    assert window_from(snapshots, now=110.0, window_s=3.0).requests == 30
    assert window_from(snapshots, now=110.5, window_s=3.0).requests == 30  # 107.5 → from 107
    assert window_from(snapshots, now=110.0, window_s=60.0).requests == 100  # from the oldest
    assert window_from(snapshots[:1], now=110.0, window_s=3.0).requests == 0
    empty = window_from([], now=110.0, window_s=3.0)
    assert (empty.requests, empty.error_rate, empty.quantile(0.99)) == (0, None, None)


@pytest.mark.parametrize("seed", range(6))
def test_histogram_quantiles_are_within_one_bucket_of_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(mean=np.log(0.02), sigma=1.0, size=int(rng.integers(200, 5000)))
    w = window(len(latencies), latency=[float(x) for x in latencies])

    for q in (0.5, 0.9, 0.99):
        truth = float(np.quantile(latencies, q))
        i = bisect_left(BOUNDS, truth)
        width = BOUNDS[i] - (BOUNDS[i - 1] if i else 0.0)
        estimate = w.quantile(q)
        assert estimate is not None
        assert abs(estimate - truth) <= width, (q, truth, estimate)


def test_quantile_edges() -> None:
    assert Window.empty(BOUNDS).quantile(0.99) is None
    assert window(10, latency=60.0).quantile(0.99) == BOUNDS[-1]  # +Inf: the last finite bound
    # all ten in the 10–25 ms bucket: the median interpolates to the middle of it
    assert window(10, latency=0.02).quantile(0.5) == pytest.approx(0.0175)
    with pytest.raises(ValueError, match="between 0 and 1"):
        window(10).quantile(99)


# -- alarms -------------------------------------------------------------------------------------


def test_a_candidate_failing_one_request_in_ten_fires_the_error_rate_alarm() -> None:
    labels = {"spam": 250, "ham": 250}
    verdicts = evaluate(
        window(500, 50, labels=labels), window(500, 1, labels=labels), AlarmConfig()
    )

    verdict = by_name(verdicts, Alarm.ERROR_RATE)
    assert verdict.state is AlarmState.FIRING
    assert verdict.value == pytest.approx(0.10) and verdict.threshold == 0.05
    assert verdict.evidence["candidate_errors"] == 50
    assert verdict.message == "candidate error rate 10.0% (50/500) over the 5% limit"
    assert firing(verdicts) == [verdict]
    assert conclusive(verdicts)
    json.dumps([v.to_dict() for v in verdicts])  # readable by the CLI and the dashboard


def test_an_error_rate_under_the_limit_is_ok() -> None:
    verdict = by_name(
        evaluate(window(500, errors=10), window(500), AlarmConfig()), Alarm.ERROR_RATE
    )

    assert verdict.state is AlarmState.OK
    assert "within the 5% limit" in verdict.message


def test_a_five_times_slower_candidate_fires_and_an_equal_one_does_not() -> None:
    rng = np.random.default_rng(0)
    base = [float(x) for x in rng.uniform(0.01, 0.02, 1000)]
    baseline = window(1000, latency=base)

    slow = by_name(
        evaluate(window(1000, latency=[5 * x for x in base]), baseline, AlarmConfig()),
        Alarm.LATENCY,
    )
    same = by_name(evaluate(window(1000, latency=base), baseline, AlarmConfig()), Alarm.LATENCY)

    assert slow.state is AlarmState.FIRING
    assert slow.value is not None and slow.value > 3
    assert slow.evidence["candidate_s"] > slow.evidence["limit_s"] > slow.evidence["baseline_s"]
    assert slow.evidence["p_value"] < 1e-9
    # the record says which quantile, on how many requests, with which margin and confidence
    for said in ("p99", "1000 requests", "+5 ms", "2x", "99.9% confidence", "slower"):
        assert said in slow.message, slow.message
    assert same.state is AlarmState.OK
    assert same.value == pytest.approx(1.0)
    assert "not shown slower" in same.message


def test_a_small_window_is_judged_on_the_quantile_its_size_supports() -> None:
    # p99's confidence interval needs 757 requests at 99.9%, p95's 149, p90's 73
    for n, q in ((1000, 0.99), (757, 0.99), (756, 0.95), (149, 0.95), (148, 0.9), (60, 0.75)):
        verdict = by_name(evaluate(window(n), window(n), AlarmConfig()), Alarm.LATENCY)
        assert verdict.evidence["quantile"] == q, (n, verdict.evidence)
        assert f"p{q * 100:g} " in verdict.message
    assert supported_quantile(10, 0.99, 0.999) is None
    assert supported_quantile(5000, 0.95, 0.999) == 0.95  # never above the configured one


def test_the_slowest_one_or_two_requests_of_a_window_never_fire() -> None:
    # the demo's false rollbacks: ~100-500 requests, equal models, a few slow hiccups on the
    # candidate's side; its p99 was 2x the baseline's, which the p99 ratio called an alarm
    rng = np.random.default_rng(1)
    for n in (100, 250, 500):
        base = [float(x) for x in rng.uniform(0.008, 0.013, n)]
        cand = [float(x) for x in rng.uniform(0.008, 0.013, n - 2)] + [0.028, 0.035]
        verdict = by_name(
            evaluate(window(n, latency=cand), window(n, latency=base), AlarmConfig()),
            Alarm.LATENCY,
        )
        assert verdict.state is AlarmState.OK, verdict.message


def test_equal_heavy_tailed_latencies_almost_never_fire() -> None:
    # both variants draw from one distribution with 2% slow hiccups (x3 to x10): what a
    # 2-core machine under load gives; 300 pairs of windows of 100 to 600 requests
    rng = np.random.default_rng(2)

    def draw(n: int) -> list[float]:
        fast = rng.lognormal(np.log(0.01), 0.25, n)
        slow = rng.random(n) < 0.02
        return [float(x) for x in np.where(slow, fast * rng.uniform(3, 10, n), fast)]

    fired = 0
    for _ in range(300):
        n = int(rng.integers(100, 600))
        verdict = by_name(
            evaluate(window(n, latency=draw(n)), window(n, latency=draw(n)), AlarmConfig()),
            Alarm.LATENCY,
        )
        fired += verdict.state is AlarmState.FIRING
    assert fired <= 1  # 99.9% confidence: ~0.3 expected, and the bound is conservative


def test_a_slower_candidate_under_the_margin_never_fires() -> None:
    # 0.1 ms → 0.9 ms is a large ratio but far under the 5 ms margin
    candidate, baseline = window(1000, latency=0.0009), window(1000, latency=0.0001)

    margined = by_name(evaluate(candidate, baseline, AlarmConfig()), Alarm.LATENCY)
    unmargined = by_name(
        evaluate(candidate, baseline, AlarmConfig(min_latency_margin_s=0.0)), Alarm.LATENCY
    )

    assert margined.value is not None and margined.value > 2
    assert margined.state is AlarmState.OK
    assert margined.evidence["limit_s"] == pytest.approx(
        margined.evidence["baseline_upper_s"] + 0.005
    )
    assert unmargined.state is AlarmState.FIRING


def test_latency_is_compared_on_the_latency_baseline_when_given() -> None:
    # the baseline over the whole rollout was quieter (fast); on the candidate's own window
    # both variants were equally slow: no alarm
    candidate = window(500, latency=0.04)
    quiet, loaded = window(2000, latency=0.004), window(500, latency=0.04)

    wide = by_name(evaluate(candidate, quiet, AlarmConfig()), Alarm.LATENCY)
    same = by_name(
        evaluate(candidate, quiet, AlarmConfig(), latency_baseline=loaded), Alarm.LATENCY
    )

    assert wide.state is AlarmState.FIRING
    assert same.state is AlarmState.OK
    assert same.evidence["baseline_requests"] == 500


def test_a_flipped_label_distribution_fires_prediction_shift_and_the_same_one_does_not() -> None:
    baseline = window(500, labels={"spam": 400, "ham": 100})
    flipped = window(500, labels={"spam": 100, "ham": 400})
    same = window(500, labels={"spam": 402, "ham": 98})

    shifted = by_name(evaluate(flipped, baseline, AlarmConfig()), Alarm.PREDICTION_SHIFT)
    steady = by_name(evaluate(same, baseline, AlarmConfig()), Alarm.PREDICTION_SHIFT)

    assert shifted.state is AlarmState.FIRING
    assert shifted.value == pytest.approx(0.6)
    assert shifted.evidence["candidate_shares"] == {"ham": 0.8, "spam": 0.2}
    assert "80.0% -> 20.0%" in shifted.message or "20.0% -> 80.0%" in shifted.message
    assert steady.state is AlarmState.OK
    assert steady.value == pytest.approx(0.004)


def test_a_label_only_one_variant_predicts_counts_toward_the_shift() -> None:
    verdict = by_name(
        evaluate(
            window(100, labels={"a": 50, "new": 50}), window(100, labels={"a": 100}), AlarmConfig()
        ),
        Alarm.PREDICTION_SHIFT,
    )

    assert verdict.value == pytest.approx(0.5)
    assert verdict.state is AlarmState.FIRING


@pytest.mark.parametrize(
    ("candidate", "baseline"),
    [
        (Window.empty(BOUNDS), Window.empty(BOUNDS)),
        (window(49, errors=49, latency=9.0, labels={"x": 49}), window(500, labels={"y": 500})),
        (window(500, errors=0, labels={"x": 500}), window(10, latency=0.0001, labels={"x": 10})),
    ],
)
def test_too_few_samples_is_insufficient_data_never_ok(candidate: Window, baseline: Window) -> None:
    verdicts = evaluate(candidate, baseline, AlarmConfig())
    judged = {v.name for v in verdicts if v.state is not AlarmState.INSUFFICIENT_DATA}

    assert len(verdicts) == 3
    # the error rate needs only the candidate; the comparisons need both variants
    assert judged == ({Alarm.ERROR_RATE} if candidate.requests >= 50 else set())
    assert not conclusive(verdicts)
    assert firing(verdicts) == [v for v in verdicts if v.state is AlarmState.FIRING]
    for v in verdicts:
        if v.state is AlarmState.INSUFFICIENT_DATA:
            assert "needed" in v.message


def test_windows_without_labels_say_how_to_turn_prediction_shift_off() -> None:
    verdict = by_name(evaluate(window(500), window(500), AlarmConfig()), Alarm.PREDICTION_SHIFT)

    assert verdict.state is AlarmState.INSUFFICIENT_DATA
    assert "max_prediction_shift" in verdict.message


def test_disabled_alarms_give_no_verdict() -> None:
    config = AlarmConfig(max_error_rate=None, max_prediction_shift=None)
    verdicts = evaluate(window(500, errors=500), window(500), config)

    assert [v.name for v in verdicts] == [Alarm.LATENCY]
    assert config.any_enabled
    assert not AlarmConfig(None, None, max_prediction_shift=None).any_enabled
    assert (
        evaluate(window(500), window(500), AlarmConfig(None, None, max_prediction_shift=None)) == []
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_error_rate", 1.5), ("max_prediction_shift", -0.1), ("max_p99_ratio", 0.0),
     ("min_samples", 0), ("min_latency_margin_s", -1.0), ("latency_quantile", 1.0),
     ("latency_confidence", 0.2)],
)  # fmt: skip
def test_invalid_alarm_config_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        AlarmConfig(**{field: value})  # type: ignore[arg-type]


def test_evaluate_takes_well_under_a_millisecond() -> None:
    candidate = window(5000, errors=30, latency=0.02, labels={"a": 2500, "b": 2000, "c": 500})
    baseline = window(5000, errors=20, latency=0.01, labels={"a": 2400, "b": 2100, "c": 500})
    config = AlarmConfig()
    best = float("inf")
    for _ in range(200):
        start = time.perf_counter()
        evaluate(candidate, baseline, config)
        best = min(best, time.perf_counter() - start)

    assert best < 0.0005


# -- A/B readout --------------------------------------------------------------------------------


def test_ab_readout_of_identical_variants_finds_no_difference() -> None:
    same = window(2000, errors=40, labels={"spam": 1200, "ham": 800})

    readout = ab_readout(same, same)

    assert readout["error_rate_test"]["p_value"] == pytest.approx(1.0)
    assert readout["label_test"]["p_value"] == pytest.approx(1.0)
    assert readout["error_rate_test"]["significant"] is False
    assert readout["summary"].startswith("no significant difference in error rate")
    assert readout["variants"]["candidate"]["requests"] == 2000
    assert readout["variants"]["baseline"]["p99_s"] == same.quantile(0.99)
    json.dumps(readout)


def test_ab_readout_of_very_different_variants_gives_tiny_p_values() -> None:
    a = window(2000, errors=20, labels={"spam": 1600, "ham": 400})
    b = window(2000, errors=200, labels={"spam": 400, "ham": 1600})

    readout = ab_readout(a, b, names=("v3", "v4"))

    assert readout["error_rate_test"]["p_value"] < 1e-9
    assert readout["label_test"]["p_value"] < 1e-9
    assert readout["error_rate_test"]["significant"] is True
    assert set(readout["variants"]) == {"v3", "v4"}
    assert readout["summary"] == (
        "v4 error rate higher (10.0% vs 1.0%, p<0.001); label distributions differ (p<0.001)"
    )


def test_ab_readout_matches_a_textbook_two_proportion_test() -> None:
    # 30/1000 vs 45/1000: pooled 3.75%, z = 0.015 / sqrt(.0375 * .9625 * .002) = 1.7655
    readout = ab_readout(window(1000, errors=30), window(1000, errors=45))

    assert readout["error_rate_test"]["z"] == pytest.approx(1.7655, abs=1e-4)
    assert readout["error_rate_test"]["p_value"] == pytest.approx(2 * norm.sf(1.7655), abs=1e-4)


def test_ab_readout_with_zero_errors_too_few_samples_or_one_label() -> None:
    no_errors = ab_readout(window(500, labels={"a": 500}), window(500, labels={"a": 500}))
    too_few = ab_readout(window(20, errors=20, labels={"a": 20}), window(500, labels={"b": 500}))

    assert no_errors["error_rate_test"]["p_value"] == 1.0
    assert no_errors["label_test"]["p_value"] is None  # one label: nothing to compare
    assert "only one label" in no_errors["summary"]
    assert too_few["error_rate_test"]["p_value"] is None
    assert too_few["label_test"]["significant"] is None
    assert too_few["summary"].startswith("too few requests")
