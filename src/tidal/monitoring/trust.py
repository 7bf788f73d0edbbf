"""Checking late labels before they are trained on: labels from ``/feedback`` are untrusted.

A sender who labels honestly rarely contradicts the champion where the champion is confident:
on the frozen holdout (labels Tidal trusts) the champion's error on rows it predicts with a
score of at least ``retrain.trust_min_score`` is small, and real drift raises it only so far.
A sender who flips labels contradicts it almost always. So, per sender (``key``: a feedback
key's id, ``anonymous``, or a dropped file), over the labelled rows a retrain would train on:

- ``n``: the sender's labels on rows the champion predicts with a score ≥ ``trust_min_score``;
- ``k``: those whose label is not the champion's prediction;
- ``bound``: the one-sided 95% Clopper-Pearson upper bound of the champion's error on the
  holdout rows it predicts as confidently (``e`` errors of ``m`` rows);
- ``allowed`` = ``bound`` + ``retrain.trust_margin`` (the excess error real drift may bring);
- ``p`` = P(X ≥ k) for X ~ Binomial(n, allowed), a one-sided binomial test.

When ``p`` < ``retrain.trust_alpha`` the sender's labels contradict the champion far more often
than its holdout error allows: they are quarantined (never trained on), with these figures as
the reason. A champion with no confident holdout rows gives no basis to doubt anyone: nothing is
quarantined and the check says so. ``screen`` is a pure function of the predictions; ``check``
loads the champion and the holdout and runs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidal.monitoring.feedback import label_text

if TYPE_CHECKING:
    from tidal.config import RetrainConfig
    from tidal.workspace import Workspace

BOUND_CONFIDENCE = 0.95  # of the holdout error's upper bound


@dataclass
class SenderCheck:
    """One sender's figures and verdict."""

    key: str
    labels: int  # the sender's labelled rows checked
    confident: int  # n: of them, rows the champion predicts with score >= min_score
    contradictions: int  # k: of those, labels that are not the champion's prediction
    rate: float  # k / n
    allowed: float  # the null rate of the test
    p_value: float  # P(X >= k), X ~ Binomial(n, allowed)
    quarantined: bool
    reason: str


@dataclass
class Screen:
    """The check of one set of labelled rows against one champion."""

    champion: str | None
    min_score: float
    margin: float
    alpha: float
    holdout_confident: int  # m: holdout rows the champion predicts with score >= min_score
    holdout_errors: int  # e: of them, wrong
    holdout_bound: float  # one-sided 95% upper bound of e / m (1.0 when m is 0)
    senders: list[SenderCheck] = field(default_factory=list)

    @property
    def quarantined(self) -> list[str]:
        return [s.key for s in self.senders if s.quarantined]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def upper_bound(errors: int, rows: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """The one-sided Clopper-Pearson upper bound of an error rate of ``errors`` in ``rows``."""
    from scipy.stats import beta

    if rows <= 0 or errors >= rows:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, rows - errors))


def screen(
    champion: str | None,
    holdout: list[tuple[Any, Any, float]],
    labelled: list[tuple[str, Any, Any, float]],
    config: RetrainConfig,
) -> Screen:
    """Check ``labelled`` (sender, label, champion's label, champion's score) per sender,
    against the champion's ``holdout`` (truth, champion's label, champion's score)."""
    from scipy.stats import binom

    min_score = config.trust_min_score
    sure = [(t, p) for t, p, s in holdout if s >= min_score]
    errors = sum(label_text(t) != label_text(p) for t, p in sure)
    bound = upper_bound(errors, len(sure))
    allowed = min(1.0, bound + config.trust_margin)
    result = Screen(
        champion, min_score, config.trust_margin, config.trust_alpha, len(sure), errors, bound
    )
    senders: dict[str, list[tuple[Any, Any, float]]] = {}
    for key, label, predicted, score in labelled:
        senders.setdefault(key, []).append((label, predicted, score))
    for key, rows in sorted(senders.items()):
        confident = [(t, p) for t, p, s in rows if s >= min_score]
        n = len(confident)
        k = sum(label_text(t) != label_text(p) for t, p in confident)
        p_value = float(binom.sf(k - 1, n, allowed)) if n and allowed < 1.0 else 1.0
        doubted = p_value < config.trust_alpha
        rate = k / n if n else 0.0
        figures = (
            f"{k} of its {n} labels on rows v{champion} predicts with a score >= "
            f"{min_score:g} contradict it ({rate:.1%}); on the holdout v{champion} errs on "
            f"{errors} of {len(sure)} such rows (95% upper bound {bound:.1%}), which with "
            f"retrain.trust_margin {config.trust_margin:g} allows {allowed:.1%}; binomial "
            f"test p = {p_value:.3g}"
        )
        if not sure:
            reason = (
                f"{key}: not checked: v{champion} predicts no holdout row with a score >= "
                f"{min_score:g}, so there is no trusted error rate to hold labels to"
            )
        elif doubted:
            reason = (
                f"{key}: quarantined: {figures} < retrain.trust_alpha {config.trust_alpha:g}. "
                "If the world really changed, land a labelled file in incoming/ instead"
            )
        else:
            reason = f"{key}: trusted: {figures} >= retrain.trust_alpha {config.trust_alpha:g}"
        result.senders.append(
            SenderCheck(key, len(rows), n, k, rate, allowed, p_value, doubted, reason)
        )
    return result


def check(ws: Workspace, rows: list[dict[str, Any]], senders: list[str]) -> Screen:
    """``screen`` the labelled ``rows`` (features and the label column) sent by ``senders``
    (one each) against the serving champion, predicting them and the holdout with it."""
    from tidal.artifact import load_predictor
    from tidal.data.prepare import from_jsonl
    from tidal.pipeline import HOLDOUT_KEY, load_schema

    deployment = ws.state.current_deployment(ws.model_name)
    schema = load_schema(ws)
    if deployment is None or schema is None:
        return screen(None, [], [], ws.config.retrain)
    champion = load_predictor(Path(deployment.model_dir), deployment.manifest_sha256)
    names, label = champion.manifest.feature_names, schema.label_column
    frame = from_jsonl(ws.store.get_bytes(HOLDOUT_KEY))
    truth = frame[label].tolist() if label in frame else []
    inputs = frame[names].astype(object).where(frame[names].notna(), None).to_dict("records")
    held = champion.predict(inputs) if truth else []
    answers = champion.predict([{n: r.get(n) for n in names} for r in rows]) if rows else []
    return screen(
        str(deployment.version),
        [(t, a["label"], float(a.get("score") or 0.0)) for t, a in zip(truth, held, strict=True)],
        [
            (key, row[label], a["label"], float(a.get("score") or 0.0))
            for key, row, a in zip(senders, rows, answers, strict=True)
        ],
        ws.config.retrain,
    )
