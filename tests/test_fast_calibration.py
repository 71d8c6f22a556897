"""Calibrating the confidence threshold from two held-out runs, row by row."""

import pytest

from fast.calibration import (
    RoutingOutcome,
    candidate_thresholds,
    choose_threshold,
    evaluate_threshold,
    system2_gains,
)

# (FaST right, switch sent it to System 2, confidence, System 2 always right, number of options)
OUTCOMES = [
    RoutingOutcome(True, True, None, True, 4),  # routed by the switch: System 2's answer
    RoutingOutcome(False, False, 0.10, True, 4),  # unsure and wrong: System 2 would fix it
    RoutingOutcome(False, False, 0.30, True, 4),
    RoutingOutcome(True, False, 0.35, False, 4),  # unsure but right: System 2 would break it
    RoutingOutcome(True, False, 0.90, True, 4),
    RoutingOutcome(True, False, 0.95, True, 4),
]
# Two-option questions the direct answer gets right and System 2 gets wrong (left/right on the toy).
BINARY = [
    RoutingOutcome(True, False, 0.05, False, 2),
    RoutingOutcome(True, False, 0.20, False, 2),
]


def test_each_threshold_is_replayed_row_by_row():
    off = evaluate_threshold(OUTCOMES, 0.0)
    assert (off.accuracy, off.system2_rate) == (pytest.approx(4 / 6), pytest.approx(1 / 6))
    t = evaluate_threshold(OUTCOMES, 0.31)  # routes 0.10 and 0.30: both fixed
    assert (t.accuracy, t.system2_rate) == (pytest.approx(6 / 6), pytest.approx(3 / 6))
    t = evaluate_threshold(OUTCOMES, 0.36)  # also routes 0.35, which System 2 gets wrong
    assert (t.accuracy, t.system2_rate) == (pytest.approx(5 / 6), pytest.approx(4 / 6))
    everything = evaluate_threshold(OUTCOMES, 1.0)  # System 2 always
    assert everything.accuracy == pytest.approx(5 / 6) and everything.system2_rate == 1.0
    assert candidate_thresholds(OUTCOMES)[0] == 0.0 and len(candidate_thresholds(OUTCOMES)) == 6
    with pytest.raises(ValueError, match="no held-out outcomes"):
        evaluate_threshold([], 0.5)


def test_a_threshold_routes_only_the_groups_it_is_given():
    rows = OUTCOMES + BINARY
    both = evaluate_threshold(rows, 0.31)  # the two binary rows are routed too, and broken
    assert (both.accuracy, both.system2_rate) == (pytest.approx(6 / 8), pytest.approx(5 / 8))
    four = evaluate_threshold(rows, 0.31, [4])
    assert (four.accuracy, four.system2_rate) == (pytest.approx(8 / 8), pytest.approx(3 / 8))
    none = evaluate_threshold(rows, 0.31, [])
    assert (none.accuracy, none.system2_rate) == (pytest.approx(6 / 8), pytest.approx(1 / 8))
    assert candidate_thresholds(rows, [2]) == pytest.approx([0.0, 0.05, 0.20], abs=1e-5)
    assert system2_gains(rows) == {2: -2, 4: 1}  # the switch's own System-2 row is not a direct row


def test_the_highest_affordable_threshold_on_the_groups_system2_helps():
    choice = choose_threshold(OUTCOMES + BINARY, max_system2_rate=0.5)
    # 4 options gain, 2 options lose: only 4-option questions are routed, up to 3 of 8 more rows
    assert choice["option_counts"] == [4] and choice["system2_gains"] == {"2": -2, "4": 1}
    assert choice["threshold"] == pytest.approx(0.35, abs=1e-5)
    assert (choice["accuracy"], choice["system2_rate"]) == (pytest.approx(7 / 8), 0.5)
    assert choice["off"]["accuracy"] == pytest.approx(6 / 8) and len(choice["sweep"]) == 6
    tight = choose_threshold(OUTCOMES + BINARY, max_system2_rate=2 / 8)  # one extra row: the 0.10 one
    assert tight["threshold"] == pytest.approx(0.10, abs=1e-5) and tight["accuracy"] == pytest.approx(7 / 8)
    assert choose_threshold(OUTCOMES, max_system2_rate=0.0)["threshold"] == 0.0  # nothing affordable


def test_the_budget_is_spent_where_the_held_out_split_cannot_rank_thresholds():
    """Two thresholds a held-out row apart are not told apart: the budget is spent."""
    outcomes = [
        RoutingOutcome(True, True, None, True, 4),
        RoutingOutcome(False, False, 0.2, True, 4),
        RoutingOutcome(False, False, 0.5, True, 4),
        RoutingOutcome(True, False, 0.8, False, 4),  # routing it costs this one row
        RoutingOutcome(True, False, 0.9, True, 4),
    ]
    choice = choose_threshold(outcomes, max_system2_rate=0.8)
    assert choice["threshold"] == pytest.approx(0.8, abs=1e-5) and choice["system2_rate"] == 0.8
    assert choice["accuracy"] == pytest.approx(4 / 5)  # one row below the most accurate, 0.5
    assert choose_threshold(outcomes, max_system2_rate=0.6)["threshold"] == pytest.approx(0.5, abs=1e-5)


def test_no_group_helped_turns_routing_off():
    choice = choose_threshold(BINARY + [RoutingOutcome(True, True, None, True, 2)], max_system2_rate=1.0)
    assert (choice["threshold"], choice["option_counts"]) == (0.0, [])
    assert choice["system2_rate"] == pytest.approx(1 / 3)
