"""Calibrating the confidence threshold from two held-out runs, row by row."""

import pytest

from fast.calibration import (
    RoutingOutcome,
    candidate_thresholds,
    choose_threshold,
    evaluate_threshold,
)

# (FaST right, switch sent it to System 2, confidence, System 2 always right)
OUTCOMES = [
    RoutingOutcome(True, True, None, True),  # routed by the switch: System 2's answer
    RoutingOutcome(False, False, 0.10, True),  # unsure and wrong: System 2 would fix it
    RoutingOutcome(False, False, 0.30, True),
    RoutingOutcome(True, False, 0.35, False),  # unsure but right: System 2 would break it
    RoutingOutcome(True, False, 0.90, True),
    RoutingOutcome(True, False, 0.95, False),
]


def test_each_threshold_is_replayed_row_by_row():
    off = evaluate_threshold(OUTCOMES, 0.0)
    assert (off.accuracy, off.system2_rate) == (pytest.approx(4 / 6), pytest.approx(1 / 6))
    t = evaluate_threshold(OUTCOMES, 0.31)  # routes 0.10 and 0.30: both fixed
    assert (t.accuracy, t.system2_rate) == (pytest.approx(6 / 6), pytest.approx(3 / 6))
    t = evaluate_threshold(OUTCOMES, 0.36)  # also routes 0.35, which System 2 gets wrong
    assert (t.accuracy, t.system2_rate) == (pytest.approx(5 / 6), pytest.approx(4 / 6))
    everything = evaluate_threshold(OUTCOMES, 1.0)  # System 2 always
    assert everything.accuracy == pytest.approx(4 / 6) and everything.system2_rate == 1.0
    assert candidate_thresholds(OUTCOMES)[0] == 0.0 and len(candidate_thresholds(OUTCOMES)) == 6
    with pytest.raises(ValueError, match="no held-out outcomes"):
        evaluate_threshold([], 0.5)


def test_the_most_accurate_affordable_threshold_is_chosen():
    choice = choose_threshold(OUTCOMES, max_system2_rate=0.5)
    assert choice["threshold"] == pytest.approx(0.30, abs=1e-5) and choice["accuracy"] == 1.0
    assert choice["off"]["accuracy"] == pytest.approx(4 / 6) and len(choice["sweep"]) == 6
    tight = choose_threshold(OUTCOMES, max_system2_rate=1 / 3)  # one extra row only: the 0.10 one
    assert tight["threshold"] == pytest.approx(0.10, abs=1e-5) and tight["accuracy"] == pytest.approx(5 / 6)
    none_affordable = choose_threshold(OUTCOMES, max_system2_rate=0.0)
    assert none_affordable["threshold"] == 0.0


def test_equally_accurate_thresholds_spend_the_rate_budget():
    """Routing a right answer that System 2 also gets right changes no accuracy: the highest
    affordable threshold of the equally accurate ones is chosen, not "off"."""
    outcomes = [
        RoutingOutcome(True, True, None, True),
        RoutingOutcome(True, False, 0.2, True),
        RoutingOutcome(True, False, 0.8, True),
        RoutingOutcome(False, False, 0.9, False),
    ]
    choice = choose_threshold(outcomes, max_system2_rate=0.75)
    assert choice["threshold"] == pytest.approx(0.8, abs=1e-5)
    assert (choice["accuracy"], choice["system2_rate"]) == (0.75, 0.75)
    assert choice["off"]["accuracy"] == 0.75
    assert choose_threshold(outcomes, max_system2_rate=0.5)["threshold"] == pytest.approx(0.2, abs=1e-5)
