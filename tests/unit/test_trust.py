"""The check of late labels: a binomial test of each sender's contradictions of a confident
champion against the champion's error on the frozen holdout."""

from __future__ import annotations

import pytest
from scipy.stats import binom

from tidal.config import RetrainConfig
from tidal.monitoring.trust import screen, upper_bound

CONFIG = RetrainConfig()  # trust_min_score 0.9, trust_margin 0.1, trust_alpha 0.001


def labelled(key: str, agree: int, contradict: int, unsure: int = 0) -> list[tuple]:
    """``key``'s labels: rows the champion says 'b' with score 0.99 and the label agrees or
    not, and rows it is unsure of (score 0.6), which are never held against anyone."""
    return (
        [(key, "b", "b", 0.99)] * agree
        + [(key, "m", "b", 0.99)] * contradict
        + [(key, "m", "b", 0.6)] * unsure
    )


HOLDOUT = [("b", "b", 0.99)] * 40 + [("m", "b", 0.95)] + [("m", "b", 0.5)] * 4  # 1 of 41 wrong


def test_the_holdout_error_bound_is_clopper_pearson() -> None:
    assert upper_bound(0, 42) == pytest.approx(1 - 0.05 ** (1 / 42))  # 0.069
    assert upper_bound(1, 41) == pytest.approx(0.1106, abs=1e-4)
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0


def test_a_sender_of_flipped_labels_is_quarantined_an_honest_one_is_not() -> None:
    rows = labelled("sha256:attacker", 3, 97, unsure=20) + labelled("sha256:honest", 207, 6)
    result = screen("1", HOLDOUT, rows, CONFIG)

    assert (result.holdout_confident, result.holdout_errors) == (41, 1)
    assert result.holdout_bound == pytest.approx(upper_bound(1, 41))
    attacker, honest = result.senders
    allowed = upper_bound(1, 41) + 0.1
    assert (attacker.labels, attacker.confident, attacker.contradictions) == (120, 100, 97)
    assert attacker.allowed == pytest.approx(allowed)
    assert (
        attacker.p_value == pytest.approx(binom.sf(96, 100, allowed)) and attacker.p_value < 1e-50
    )
    assert attacker.quarantined and result.quarantined == ["sha256:attacker"]
    assert "97 of its 100 labels" in attacker.reason and "quarantined" in attacker.reason
    assert (honest.confident, honest.contradictions, honest.quarantined) == (213, 6, False)
    assert honest.p_value > 0.99 and honest.reason.startswith("sha256:honest: trusted")


def test_the_test_is_one_sided_at_trust_alpha() -> None:
    # allowed = bound(1, 41) + 0.1 ≈ 0.213; 50 confident labels: the quarantine starts where
    # P(X >= k) falls under 0.001, not at a fixed rate
    allowed = upper_bound(1, 41) + 0.1
    first = next(k for k in range(51) if binom.sf(k - 1, 50, allowed) < 0.001)
    below = screen("1", HOLDOUT, labelled("k", 50 - first + 1, first - 1), CONFIG).senders[0]
    at = screen("1", HOLDOUT, labelled("k", 50 - first, first), CONFIG).senders[0]
    assert not below.quarantined and at.quarantined
    assert 0.3 < first / 50 < 0.45  # about twice the allowed rate, with 50 labels


def test_no_confident_holdout_row_means_no_basis_to_doubt() -> None:
    result = screen("1", [("m", "b", 0.5)] * 10, labelled("k", 0, 50), CONFIG)
    (sender,) = result.senders
    assert not sender.quarantined and "not checked" in sender.reason
