"""The gate: decide whether a candidate may replace the champion, and record why.

Both models are scored on the same data: the frozen holdout (cut from the first accepted file,
never fed by later uploads) and the new file's test split. A test split cut from a retrain file
of late labels is *untrusted* (labels from ``/feedback`` could be poisoned): it is scored and
recorded, and the candidate must meet the thresholds there, but the comparison with the
champion rests on the trusted slices only. Rules, all of which must pass:

1. thresholds: the candidate meets ``gate.min_accuracy`` and ``gate.min_macro_f1`` on every
   evaluation slice;
2. non-inferiority: on the trusted slices combined (the ``combined`` slice), the candidate is
   not worse than the champion by more than ``gate.tolerance`` on any metric;
3. the holdout: on the frozen holdout alone, the candidate is not worse than the champion by
   more than ``gate.holdout_tolerance`` (0 by default: never worse) on any metric.

Without a champion (the first run) the decision rests on thresholds alone, and the record says
so.

``decide`` is a pure function of the scores; it returns the decision and every reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tidal.config import GateConfig

METRICS = ("accuracy", "macro_f1")


class Decision(StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"
    INVALID = "invalid"


@dataclass
class GateResult:
    decision: Decision
    reasons: list[str]
    candidate: dict[str, dict[str, float]]  # slice → metric → value
    champion: dict[str, dict[str, float]] | None
    champion_version: str | None
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: dict[str, dict[str, float]],
    champion: dict[str, dict[str, float]] | None,
    config: GateConfig,
    *,
    champion_version: str | None = None,
    untrusted: list[str] | None = None,
) -> GateResult:
    """Apply the rules above to per-slice scores (which include a ``combined`` slice, over
    the slices not named in ``untrusted``)."""
    floors = {"accuracy": config.min_accuracy, "macro_f1": config.min_macro_f1}
    reasons: list[str] = []
    passed = True
    for slice_name, scores in candidate.items():
        if slice_name == "combined":
            continue
        for metric, floor in floors.items():
            value = scores[metric]
            if value < floor:
                passed = False
                reasons.append(
                    f"{metric} {value:.3f} on {slice_name} ({int(scores['rows'])} rows) is below "
                    f"the minimum {floor:.3f} (gate.min_{metric})"
                )
    if champion is None:
        reasons.append("no champion yet: decided on thresholds alone")
    else:
        for name in untrusted or []:
            reasons.append(
                f"{name} holds late labels, untrusted: the comparison with champion "
                f"v{champion_version} leaves it out"
            )
        for metric in METRICS:
            new, old = candidate["combined"][metric], champion["combined"][metric]
            if new < old - config.tolerance:
                passed = False
                reasons.append(
                    f"{metric} {new:.3f} is worse than champion v{champion_version}'s {old:.3f} "
                    f"by more than the tolerance {config.tolerance:.3f} on the same data"
                )
            else:
                reasons.append(
                    f"{metric} {new:.3f} vs champion v{champion_version}'s {old:.3f} "
                    f"(tolerance {config.tolerance:.3f}): not worse"
                )
        if "holdout" in candidate and "holdout" in champion:
            passed &= _holdout_rule(candidate, champion, config, champion_version, reasons)
    if passed:
        reasons.insert(
            0,
            "meets every threshold"
            + ("" if champion is None else " and is not worse than the champion"),
        )
    return GateResult(
        decision=Decision.PROMOTED if passed else Decision.REJECTED,
        reasons=reasons,
        candidate=candidate,
        champion=champion,
        champion_version=champion_version,
        thresholds={**floors, "tolerance": config.tolerance},
    )


def _holdout_rule(
    candidate: dict[str, dict[str, float]],
    champion: dict[str, dict[str, float]],
    config: GateConfig,
    champion_version: str | None,
    reasons: list[str],
) -> bool:
    """Rule 3: not worse than the champion on the frozen holdout; appends its reasons."""
    passed = True
    rows = int(candidate["holdout"].get("rows", 0))
    for metric in METRICS:
        new, old = candidate["holdout"][metric], champion["holdout"][metric]
        if new < old - config.holdout_tolerance:
            passed = False
            reasons.append(
                f"{metric} {new:.3f} on the frozen holdout ({rows} rows) is worse than champion "
                f"v{champion_version}'s {old:.3f} (gate.holdout_tolerance "
                f"{config.holdout_tolerance:.3f}): a candidate worse on the holdout is never "
                "promoted"
            )
    if passed:
        reasons.append(
            f"on the frozen holdout ({rows} rows) not worse than champion v{champion_version} "
            f"(gate.holdout_tolerance {config.holdout_tolerance:.3f})"
        )
    return passed
