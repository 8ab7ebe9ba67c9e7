"""Every metric on small hand-made prediction sets, with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from logivote.evaluation import (
    baselines,
    by_vote_share,
    ensemble,
    pairwise_agreement,
    per_adapter,
    vote_size_curve,
    wilson,
    winner,
)

GOLD = {"q1": "A", "q2": "B", "q3": "C", "q4": "A"}
ANSWERS = {
    "a": {"q1": "A", "q2": "B", "q3": "A", "q4": "invalid"},  # 2 of 4 right
    "b": {"q1": "A", "q2": "C", "q3": "C", "q4": "A"},        # 3 of 4
    "c": {"q1": "B", "q2": "B", "q3": "B"},                    # 1 of 3 (q4 missing)
    "d": {},                                                   # answered nothing (no out-of-bag question)
}


def test_wilson_interval_matches_the_formula() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # textbook values
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == pytest.approx(1.0)


def test_per_adapter_accuracy_invalid_and_letters() -> None:
    got = per_adapter(ANSWERS, GOLD)
    assert (got["a"]["correct"], got["a"]["n"], got["a"]["invalid"]) == (2, 4, 1)
    assert got["a"]["letters"] == {"A": 2, "B": 1}  # invalid is not a letter
    assert got["b"]["accuracy"] == 0.75 and got["c"]["accuracy"] == pytest.approx(1 / 3)
    assert got["d"] == {"n": 0, "correct": 0, "accuracy": None, "wilson_low": 0.0, "wilson_high": 1.0, "invalid": 0, "letters": {}}
    assert per_adapter({"x": {"q9": "A"}}, GOLD)["x"]["n"] == 0  # questions without gold do not count


def test_winner_ties_go_alphabetically_and_invalid_is_no_vote() -> None:
    assert winner(["B", "A", "B", "A"]) == "A"
    assert winner(["invalid", "C", "invalid"]) == "C"
    assert winner(["invalid"]) is None and winner([]) is None
    assert winner(["A", "B", "B"], weights=[0.9, 0.3, 0.3]) == "A"  # 0.9 against 0.6


def test_ensemble_votes_only_over_adapters_that_answered() -> None:
    # q1: A,A,B -> A right; q2: B,C,B -> B right; q3: A,C,B -> tie, A (wrong); q4: invalid, A -> A right
    got = ensemble(ANSWERS, GOLD)
    assert (got["correct"], got["n"]) == (3, 4)
    assert got["mean_voters"] == pytest.approx((3 + 3 + 3 + 2) / 4)
    assert ensemble(ANSWERS, GOLD, voters=["d"]) == {"n": 0, "correct": 0, "accuracy": None, "mean_voters": 0.0}
    # logprob weights: a's confident wrong A on q3 loses to b's C plus c's B? weights a 0.2, b 0.9, c 0.5 -> C wins
    logprobs = {"a": {"q3": math.log(0.2)}, "b": {"q3": math.log(0.9)}, "c": {"q3": math.log(0.5)}}
    assert ensemble(ANSWERS, {"q3": "C"}, logprobs=logprobs)["correct"] == 1
    assert ensemble(ANSWERS, {"q3": "C"})["correct"] == 0


def test_vote_size_curve_enumerates_small_sets_and_skips_impossible_sizes() -> None:
    three = {k: ANSWERS[k] for k in "abc"}
    curve = vote_size_curve(three, GOLD, sizes=[1, 2, 3, 5])
    assert [row["voters"] for row in curve] == [1, 2, 3]  # 5 > 3 adapters: skipped
    one = curve[0]
    assert one["sets"] == 3 and one["mean"] == pytest.approx((0.5 + 0.75 + 1 / 3) / 3)
    # sorted 1/3, 1/2, 3/4: the 10th percentile lies 0.2 of the way from the first to the second, the 90th 0.8 from the second to the third
    assert one["p10"] == pytest.approx(1 / 3 + 0.2 * (0.5 - 1 / 3)) and one["p90"] == pytest.approx(0.5 + 0.8 * 0.25)
    assert curve[2]["sets"] == 1 and curve[2]["mean"] == 0.75
    many = {f"m{i}": {"q1": "A" if i % 2 else "B"} for i in range(12)}
    row = vote_size_curve(many, {"q1": "A"}, sizes=[5], draws=100, seed=1)[0]
    assert row["sets"] == 100 and 0 < row["mean"] < 1 and row["p10"] <= row["mean"] <= row["p90"]
    assert vote_size_curve(many, {"q1": "A"}, sizes=[5], draws=100, seed=1) == [row]  # seeded


def test_accuracy_by_vote_share() -> None:
    # shares of all 4 adapters: q1 A 2/4 = 0.5, q2 B 2/4, q3 A 1/4 (tie), q4 A 1/4
    buckets = by_vote_share(ANSWERS, GOLD, edges=(0.5, 1.0))
    low, high = buckets
    assert (low["n"], low["correct"]) == (2, 1)  # q3 wrong, q4 right
    assert (high["n"], high["correct"], high["accuracy"]) == (2, 2, 1.0)


def test_baselines() -> None:
    got = baselines(GOLD, {"q1": 2, "q2": 4, "q3": 4, "q4": 5}, ["B", "A", "A", "B", "C"])
    assert got["most_frequent_letter"] == "A"  # A and B tie at 2: alphabetical
    assert got["most_frequent_accuracy"] == 0.5
    assert got["uniform_random_accuracy"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 4 + 1 / 5) / 4)
    assert baselines({}, {}, [])["most_frequent_accuracy"] is None


def test_pairwise_agreement() -> None:
    got = pairwise_agreement({k: ANSWERS[k] for k in "abd"})
    assert got["a"]["a"] == 1.0
    assert got["a"]["b"] == pytest.approx(1 / 3)  # q1 same, q2 and q3 differ, q4 is invalid for a: left out
    assert got["a"]["d"] is None
