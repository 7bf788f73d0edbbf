"""Rollout alarms: judge a candidate against the baseline on windows of endpoint snapshots.

The endpoint writes, per variant, a cumulative ``Snapshot`` about once a second; a ``Window`` is
the difference between two of them (``window_from`` picks the pair for "the last N seconds").
``evaluate`` turns a candidate window and a baseline window into one ``Verdict`` per enabled
alarm:

    error_rate        candidate errors / requests > max_error_rate       needs candidate samples
    latency           the candidate's latency quantile is, with stated    needs both variants
                      confidence, above max(ratio x baseline's, baseline's + margin)
    prediction_shift  total variation distance between label shares     needs both variants
                      > max_prediction_shift

The latency decision is a test, not a ratio of two point estimates (a p99 of 100 requests is
their slowest one or two: noise). On one window, the same span for both variants:

1. the quantile: the highest of ``latency_quantile`` (p99) and the steps below it (p95, p90,
   p75, p50) whose distribution-free confidence interval exists for the smaller sample at
   ``latency_confidence``: ``q**n`` and ``(1 - q)**n`` both under ``(1 - confidence) / 2``
   (99.9%: p99 needs 757 requests, p95 149, p90 73, p75 27);
2. the limit: the baseline's quantile at its upper confidence bound (the order statistic of
   that rank), times ``max_p99_ratio`` or plus ``min_latency_margin_s``, whichever is higher;
3. the test: if the candidate's quantile were at the limit, each of its requests would exceed
   the limit with probability ``1 - q``; the alarm fires when the candidate's requests over the
   limit are more than that allows (one-sided exact binomial test, p under ``1 - confidence``).

A false alarm then needs the baseline's bound and the candidate's count both wrong at once.
Measured on a loaded 2-core VM: the demo's canary between two equal models (``bench/
canary_bench.py``, 50% then 100% of ~100 requests a second, 10 s bakes) was rolled back in 0
of 20 runs, where the p99 ratio rolled back 13 of 20; the tests' 5x slower candidate (20 ms a
row) is rolled back 1.2-1.7 s after its first traffic (p ~ 1e-7 on its first ~24 requests),
where the p99 ratio, which waited for 100 of them, took 3.9-5.2 s. The price: a candidate
under the ratio (or the margin) more than the baseline's upper bound is never called slower.

No data is never a pass: a variant under ``min_samples`` in the window gives
``insufficient_data``, never ``ok``, so a rollout that saw no traffic cannot promote.
``ab_readout`` is the experiment view of the same windows: per-variant numbers and p-values.

Quantiles come from the histogram as Prometheus' ``histogram_quantile`` computes them: linear
inside the bucket that holds the rank (the first bucket starts at 0), and the highest finite
bound when the rank falls in the +Inf bucket; requests over a limit are counted the same way
(the share of the limit's bucket above it, rounded down). Everything here is pure and takes
tens of µs.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tidal.errors import ConfigError, TidalError
from tidal.serving.metrics import LATENCY_BUCKETS


@dataclass(frozen=True)
class Snapshot:
    """One variant's cumulative counts since it started, at unix time ``t``."""

    t: float
    requests: int
    errors: int  # answers with a 5xx status
    bounds: tuple[float, ...]  # latency bucket upper bounds, seconds
    counts: tuple[int, ...]  # per bucket (not cumulative), one more than bounds: the last is +Inf
    labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise TidalError(
                f"snapshot at t={self.t} has {len(self.counts)} latency counts for "
                f"{len(self.bounds)} bounds; expected one per bound plus one for +Inf"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        try:
            latency = data["latency"]
            return cls(
                t=float(data["t"]),
                requests=int(data["requests"]),
                errors=int(data["errors"]),
                bounds=tuple(float(b) for b in latency["bounds"]),
                counts=tuple(int(c) for c in latency["counts"]),
                labels={str(k): int(v) for k, v in (data.get("labels") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TidalError(
                f"malformed endpoint snapshot ({type(exc).__name__}: {exc}); expected "
                '{"t", "requests", "errors", "latency": {"bounds", "counts"}, "labels"}'
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        latency = {"bounds": list(self.bounds), "counts": list(self.counts)}
        labels = dict(self.labels)
        return {"t": self.t, "requests": self.requests, "errors": self.errors, "latency": latency,
                "labels": labels}  # fmt: skip


@dataclass(frozen=True)
class Window:
    """What one variant did between two snapshots: plain counts, not cumulative."""

    requests: int
    errors: int
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per latency bucket, the last is +Inf
    labels: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, bounds: Sequence[float] = LATENCY_BUCKETS) -> Window:
        return cls(0, 0, tuple(bounds), (0,) * (len(bounds) + 1), {})

    @classmethod
    def between(cls, older: Snapshot, newer: Snapshot) -> Window:
        """``newer - older``; all of ``newer`` when a counter went down (the variant restarted)
        or the bucket bounds changed."""
        counts = [n - o for n, o in zip(newer.counts, older.counts, strict=False)]
        labels = {k: v - older.labels.get(k, 0) for k, v in newer.labels.items()}
        restarted = (
            newer.requests < older.requests
            or newer.errors < older.errors
            or newer.bounds != older.bounds
            or min(counts) < 0
            or any(v < 0 for v in labels.values())
            or any(k not in newer.labels for k in older.labels)
        )
        if restarted:
            return cls(newer.requests, newer.errors, newer.bounds, newer.counts, dict(newer.labels))
        requests, errors = newer.requests - older.requests, newer.errors - older.errors
        return cls(
            requests, errors, newer.bounds, tuple(counts), {k: v for k, v in labels.items() if v}
        )

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def observed(self) -> int:
        """Requests with a latency in the histogram."""
        return sum(self.counts)

    @property
    def labelled(self) -> int:
        """Predictions with a label (a request may carry several rows, or none)."""
        return sum(self.labels.values())

    @property
    def label_shares(self) -> dict[str, float]:
        total = self.labelled
        return {k: v / total for k, v in sorted(self.labels.items()) if v} if total else {}

    def describe(self) -> dict[str, Any]:
        """The numbers a person reads: counts, error rate, p50/p99 and label shares."""
        return {
            "requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
            "p50_s": self.quantile(0.5), "p99_s": self.quantile(0.99),
            "labelled": self.labelled, "label_shares": self.label_shares,
        }  # fmt: skip

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of latency in seconds, None when the window saw no requests."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, got {q}")
        total = sum(self.counts)
        if not total:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if i == len(self.bounds):  # +Inf: the best we can say is "above the last bound"
                    return self.bounds[-1] if self.bounds else None
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (self.bounds[i] - lower) * (rank - seen) / count
            seen += count
        return None  # unreachable: the last non-empty bucket always reaches the rank

    def count_over(self, limit: float) -> int:
        """Requests slower than ``limit`` seconds: whole buckets above it, the share of its own
        bucket above it (linear, as ``quantile``), the +Inf bucket always; rounded down."""
        over = 0.0
        for i, count in enumerate(self.counts):
            lower = self.bounds[i - 1] if i else 0.0
            if i == len(self.bounds) or lower >= limit:
                over += count
            elif count and self.bounds[i] > limit:
                over += count * (self.bounds[i] - limit) / (self.bounds[i] - lower)
        return int(over + 1e-9)


def window_from(snapshots: Sequence[Snapshot], now: float, window_s: float) -> Window:
    """The last ``window_s`` seconds of time-ordered ``snapshots``: from the latest snapshot at
    or before ``now - window_s`` (the oldest if none reaches back that far) to the newest."""
    if not snapshots:
        return Window.empty()
    after = bisect_right(snapshots, now - window_s, key=lambda s: s.t)  # first one past the cut
    return Window.between(snapshots[max(after - 1, 0)], snapshots[-1])


# -- alarms -------------------------------------------------------------------------------------


class Alarm(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY = "latency"
    PREDICTION_SHIFT = "prediction_shift"


class AlarmState(StrEnum):
    OK = "ok"
    FIRING = "firing"
    INSUFFICIENT_DATA = "insufficient_data"


QUANTILES = (0.99, 0.95, 0.9, 0.75, 0.5)  # the latency quantile falls back along these


@dataclass
class AlarmConfig:
    """Limits for the candidate; None turns an alarm off."""

    max_error_rate: float | None = 0.05
    max_p99_ratio: float | None = 2.0  # the latency quantile's ratio, candidate / baseline
    max_prediction_shift: float | None = 0.2  # total variation distance, 0..1
    min_samples: int = 50  # per window, per variant involved
    min_latency_margin_s: float = 0.005  # and the candidate at least this much slower
    latency_quantile: float = 0.99  # the quantile judged when the window is large enough
    latency_confidence: float = 0.999  # of the test that the candidate is slower

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "max_prediction_shift"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"alarm {name} must be between 0 and 1 (or null), got {value}")
        if self.max_p99_ratio is not None and self.max_p99_ratio <= 0:
            raise ConfigError(f"alarm max_p99_ratio must be above 0, got {self.max_p99_ratio}")
        if self.min_latency_margin_s < 0 or self.min_samples < 1:
            raise ConfigError(
                f"alarm min_latency_margin_s must be >= 0 and min_samples >= 1, "
                f"got {self.min_latency_margin_s} and {self.min_samples}"
            )
        for name in ("latency_quantile", "latency_confidence"):
            value = getattr(self, name)
            if not 0.5 <= value < 1.0:
                raise ConfigError(
                    f"alarm {name} must be at least 0.5 and below 1, got {value} "
                    "(0.99 is p99; a confidence of 0.999 is 99.9%)"
                )

    @property
    def any_enabled(self) -> bool:
        limits = (self.max_error_rate, self.max_p99_ratio, self.max_prediction_shift)
        return any(limit is not None for limit in limits)


@dataclass(frozen=True)
class Verdict:
    name: Alarm
    state: AlarmState
    value: float | None  # error rate, p99 ratio or distance; may be set when insufficient
    threshold: float | None
    evidence: dict[str, Any]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(x: float) -> str:
    return f"{x:.1%}" if x else "0%"


def _secs(s: float) -> str:
    return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"


def _too_few(who: str, n: int, need: int, unit: str, purpose: str) -> str:
    return f"{who} has {n} {unit} in the window, {need} needed to {purpose}"


def _error_rate(cand: Window, base: Window, limit: float, need: int) -> Verdict:
    rate = cand.error_rate
    evidence = {
        "candidate_requests": cand.requests, "candidate_errors": cand.errors,
        "candidate_error_rate": rate, "baseline_requests": base.requests,
        "baseline_errors": base.errors, "baseline_error_rate": base.error_rate,
    }  # fmt: skip
    if cand.requests < need:
        msg = _too_few("candidate", cand.requests, need, "requests", "judge its error rate")
        return Verdict(Alarm.ERROR_RATE, AlarmState.INSUFFICIENT_DATA, rate, limit, evidence, msg)
    assert rate is not None
    over = rate > limit
    msg = (
        f"candidate error rate {_pct(rate)} ({cand.errors}/{cand.requests}) "
        f"{'over' if over else 'within'} the {limit * 100:g}% limit"
    )
    state = AlarmState.FIRING if over else AlarmState.OK
    return Verdict(Alarm.ERROR_RATE, state, rate, limit, evidence, msg)


def supported_quantile(n: int, target: float, confidence: float) -> float | None:
    """The highest of ``target`` and ``QUANTILES`` below it whose distribution-free confidence
    interval exists for ``n`` values at ``confidence``; None when not even the median's does."""
    tail = (1.0 - confidence) / 2
    for q in (target, *(q for q in QUANTILES if q < target)):
        if n and q**n <= tail and (1.0 - q) ** n <= tail:
            return q
    return None


def upper_bound(window: Window, q: float, confidence: float) -> float | None:
    """The upper ``confidence`` bound of ``window``'s ``q`` quantile: its order statistic of
    rank r, the smallest with P(Binomial(n, q) <= r - 1) >= 1 - (1 - confidence) / 2."""
    from scipy.special import bdtr  # imported once scipy is loaded: µs afterwards

    n = window.observed
    want = 1.0 - (1.0 - confidence) / 2
    lo, hi = 1, n
    while lo < hi:  # bdtr(r - 1, n, q) grows with r
        mid = (lo + hi) // 2
        if bdtr(mid - 1, n, q) >= want:
            hi = mid
        else:
            lo = mid + 1
    return window.quantile(lo / n) if n else None


def _latency(cand: Window, base: Window, config: AlarmConfig) -> Verdict:
    from scipy.special import bdtrc

    ratio_limit = config.max_p99_ratio
    assert ratio_limit is not None
    margin, confidence = config.min_latency_margin_s, config.latency_confidence
    n_c, n_b = cand.observed, base.observed
    q = supported_quantile(min(n_c, n_b), config.latency_quantile, confidence)
    evidence: dict[str, Any] = {
        "quantile": q, "confidence": confidence, "margin_s": margin,
        "candidate_requests": n_c, "baseline_requests": n_b,
    }  # fmt: skip
    name, insufficient = Alarm.LATENCY, AlarmState.INSUFFICIENT_DATA
    for who, n in (("candidate", n_c), ("baseline", n_b)):
        if n < config.min_samples:
            msg = _too_few(who, n, config.min_samples, "requests", "compare latency")
            return Verdict(name, insufficient, None, ratio_limit, evidence, msg)
    if q is None:  # only with min_samples under 11 at 99.9%
        msg = f"{min(n_c, n_b)} requests support no latency quantile at {confidence:.1%}"
        return Verdict(name, insufficient, None, ratio_limit, evidence, msg)
    c_q, b_q, b_up = cand.quantile(q), base.quantile(q), upper_bound(base, q, confidence)
    assert c_q is not None and b_q is not None and b_up is not None
    limit = max(ratio_limit * b_up, b_up + margin)
    over = cand.count_over(limit)
    expected = n_c * (1.0 - q)
    p = float(bdtrc(over - 1, n_c, 1.0 - q)) if over else 1.0
    ratio = c_q / b_q if b_q else None
    evidence |= {
        "candidate_s": c_q, "baseline_s": b_q, "baseline_upper_s": b_up, "ratio": ratio,
        "limit_s": limit, "candidate_over_limit": over, "expected_over_limit": expected,
        "p_value": p,
    }  # fmt: skip
    label = f"p{q * 100:g}"
    said = (
        f"candidate {label} {_secs(c_q)} ({n_c} requests) vs baseline {label} {_secs(b_q)} "
        f"({n_b} requests, at most {_secs(b_up)} with {confidence:.1%} confidence); "
        f"{over} candidate requests over the limit {_secs(limit)} (the higher of "
        f"{ratio_limit:g}x and +{_secs(margin)}), {expected:.3g} expected at most (binomial "
        f"p={p:.2g})"
    )
    if p < 1.0 - confidence:
        msg = f"latency: {said}: slower with {confidence:.1%} confidence"
        return Verdict(name, AlarmState.FIRING, ratio, ratio_limit, evidence, msg)
    msg = f"latency: {said}: not shown slower at {confidence:.1%} confidence"
    return Verdict(name, AlarmState.OK, ratio, ratio_limit, evidence, msg)


def _shift(cand: Window, base: Window, limit: float, need: int) -> Verdict:
    cs, bs = cand.label_shares, base.label_shares
    diffs = {k: cs.get(k, 0.0) - bs.get(k, 0.0) for k in sorted(cs.keys() | bs.keys())}
    distance = 0.5 * sum(abs(d) for d in diffs.values()) if cs and bs else None
    evidence = {
        "distance": distance, "candidate_shares": cs, "baseline_shares": bs,
        "candidate_labelled": cand.labelled, "baseline_labelled": base.labelled,
    }  # fmt: skip
    name, insufficient = Alarm.PREDICTION_SHIFT, AlarmState.INSUFFICIENT_DATA
    if not cand.labels and not base.labels and min(cand.requests, base.requests) >= need:
        msg = (
            "neither variant recorded prediction labels; turn the prediction_shift alarm off "
            "(max_prediction_shift: null) for models without class labels"
        )
        return Verdict(name, insufficient, None, limit, evidence, msg)
    for who, window in (("candidate", cand), ("baseline", base)):
        if window.labelled < need:
            msg = _too_few(who, window.labelled, need, "labelled predictions", "compare labels")
            return Verdict(name, insufficient, distance, limit, evidence, msg)
    assert distance is not None
    top = max(diffs, key=lambda k: abs(diffs[k]))
    over = distance > limit
    msg = (
        f"candidate label distribution is {distance:.2f} from the baseline's (total variation), "
        f"{'over' if over else 'within'} the {limit:g} limit; largest change: {top!r} "
        f"{_pct(bs.get(top, 0.0))} -> {_pct(cs.get(top, 0.0))}"
    )
    return Verdict(
        name, AlarmState.FIRING if over else AlarmState.OK, distance, limit, evidence, msg
    )


def evaluate(
    candidate: Window,
    baseline: Window,
    config: AlarmConfig,
    *,
    latency_baseline: Window | None = None,
) -> list[Verdict]:
    """One verdict per enabled alarm, in the order of ``Alarm``. ``latency_baseline`` is the
    baseline over the candidate's own span when ``baseline`` reaches further back (latency
    depends on the load of the moment: it is compared on the same window only)."""
    need = config.min_samples
    verdicts = []
    if config.max_error_rate is not None:
        verdicts.append(_error_rate(candidate, baseline, config.max_error_rate, need))
    if config.max_p99_ratio is not None:
        same = baseline if latency_baseline is None else latency_baseline
        verdicts.append(_latency(candidate, same, config))
    if config.max_prediction_shift is not None:
        verdicts.append(_shift(candidate, baseline, config.max_prediction_shift, need))
    return verdicts


def firing(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.state is AlarmState.FIRING]


def conclusive(verdicts: Sequence[Verdict]) -> bool:
    """Every verdict is ok or firing: the window had enough data to decide on."""
    return all(v.state is not AlarmState.INSUFFICIENT_DATA for v in verdicts)


# -- A/B readout --------------------------------------------------------------------------------


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _two_proportions(e1: int, n1: int, e2: int, n2: int) -> tuple[float, float]:
    """Two-sided two-proportion z-test: (z, p). Equal all-or-nothing rates give (0, 1)."""
    pooled = (e1 + e2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (e2 / n2 - e1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def _error_test(
    a: Window, b: Window, names: tuple[str, str], alpha: float, need: int
) -> tuple[dict[str, Any], str]:
    test: dict[str, Any] = {"test": "two-proportion z-test", "z": None, "p_value": None}
    if min(a.requests, b.requests) < need:
        return test, (
            f"too few requests to compare error rates ({a.requests} and {b.requests}, "
            f"{need} needed each)"
        )
    z, p = _two_proportions(a.errors, a.requests, b.errors, b.requests)
    test |= {"z": z, "p_value": p}
    rates = f"{_pct(b.errors / b.requests)} vs {_pct(a.errors / a.requests)}, {_p(p)}"
    if p < alpha:
        return test, f"{names[1]} error rate {'higher' if z > 0 else 'lower'} ({rates})"
    return test, f"no significant difference in error rate ({rates})"


def _label_test(a: Window, b: Window, alpha: float, need: int) -> tuple[dict[str, Any], str]:
    test: dict[str, Any] = {"test": "chi-squared homogeneity", "chi2": None, "p_value": None}
    keys = sorted({k for w in (a, b) for k, v in w.labels.items() if v})
    if min(a.labelled, b.labelled) < need:
        return test, "too few labelled predictions to compare label distributions"
    if len(keys) < 2:
        return test, f"only one label seen ({keys[0]!r}), no distribution to compare"
    from scipy.stats import chi2_contingency  # ~100 ms to import: only when a readout is asked

    result = chi2_contingency([[w.labels.get(k, 0) for k in keys] for w in (a, b)])
    p = float(result.pvalue)
    test |= {"chi2": float(result.statistic), "dof": int(result.dof), "p_value": p}
    if p < alpha:
        return test, f"label distributions differ ({_p(p)})"
    return test, f"no significant difference in label distributions ({_p(p)})"


def ab_readout(
    a: Window,
    b: Window,
    *,
    names: tuple[str, str] = ("baseline", "candidate"),
    alpha: float = 0.05,
    min_samples: int = 50,
) -> dict[str, Any]:
    """Per-variant numbers and significance tests for ``a`` vs ``b``. A p-value is None when a
    variant has under ``min_samples`` requests (labelled predictions for the label test), or
    when only one label was seen."""
    need = max(min_samples, 1)
    errors, said_errors = _error_test(a, b, names, alpha, need)
    labels, said_labels = _label_test(a, b, alpha, need)
    for test in (errors, labels):
        test["significant"] = None if test["p_value"] is None else test["p_value"] < alpha
    variants = {name: w.describe() for name, w in zip(names, (a, b), strict=True)}
    return {
        "names": list(names),
        "alpha": alpha,
        "variants": variants,
        "error_rate_test": errors,
        "label_test": labels,
        "summary": f"{said_errors}; {said_labels}",
    }
