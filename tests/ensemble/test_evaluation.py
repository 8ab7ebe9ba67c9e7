"""Every metric on small hand-made prediction sets, with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from logivote.ensemble.evaluation import (
    baselines,
    by_vote_share,
    ensemble,
    lead_by_group,
    learning_relations,
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
    assert got["most_frequent_accuracy"] == 0.5 and got["most_frequent_correct"] == 2
    assert got["uniform_random_accuracy"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 4 + 1 / 5) / 4)
    assert baselines({}, {}, [])["most_frequent_accuracy"] is None


def test_pairwise_agreement() -> None:
    got = pairwise_agreement({k: ANSWERS[k] for k in "abd"})
    assert got["a"]["a"] == 1.0
    assert got["a"]["b"] == pytest.approx(1 / 3)  # q1 same, q2 and q3 differ, q4 is invalid for a: left out
    assert got["a"]["d"] is None


def test_evaluate_writes_metrics_and_tables(tmp_path) -> None:  # noqa: ANN001
    import json

    from logivote.data.jsonl import atomic_write_jsonl
    from logivote.ensemble.evaluation import evaluate

    n_options = {"q1": 2, "q2": 4, "q3": 4, "q4": 5}
    dev, oob, preds = {}, {}, {}
    for k, name in enumerate("abc"):
        dev[k] = tmp_path / f"dev{k}.jsonl"
        atomic_write_jsonl(dev[k], [{"qid": q, "answer": a, "logprob": -0.1, "gold": GOLD[q], "n_options": n_options[q]}
                                    for q, a in ANSWERS[name].items()])
        oob[k] = tmp_path / f"oob{k}.jsonl"
        atomic_write_jsonl(oob[k], [] if k == 2 else [{"qid": f"o{k}", "answer": "A", "logprob": None, "gold": "A", "n_options": 2}])
        preds[k] = tmp_path / f"pred{k}.jsonl"
        atomic_write_jsonl(preds[k], [{"qid": "t1", "answer": "AAB"[k], "logprob": None}, {"qid": "t2", "answer": "invalid", "logprob": None}])
    pool = tmp_path / "pool.jsonl"
    atomic_write_jsonl(pool, [{"qid": f"p#{i}", "puzzle_id": "p", "question_index": i, "source": "s", "problem": "P", "question": "Q",
                               "options": ["x", "y"], "answer": letter} for i, letter in enumerate("BBA")])
    round1 = tmp_path / "r1.jsonl"
    atomic_write_jsonl(round1, [{"qid": "t1", "counts": {"A": 2, "B": 1}, "n_adapters": 3, "n_valid": 3, "n_invalid": 0, "n_missing": 0,
                                 "winner": "A", "share": 2 / 3, "strict_majority": True},
                                {"qid": "t2", "counts": {}, "n_adapters": 3, "n_valid": 0, "n_invalid": 3, "n_missing": 0,
                                 "winner": None, "share": 0.0, "strict_majority": False}])
    round2 = tmp_path / "r2.jsonl"
    atomic_write_jsonl(round2, [{"qid": "t2", "counts": {"C": 4}, "winner": "C", "n_valid": 4, "n_invalid": 2}])
    dev_questions = tmp_path / "dev.jsonl"
    atomic_write_jsonl(dev_questions, [{"qid": q, "puzzle_id": q, "question_index": 0, "source": "s", "problem": "P", "question": "Q",
                                        "options": ["o"] * n_options[q], "answer": GOLD[q]} for q in GOLD])
    dev_round2 = tmp_path / "dev_r2.jsonl"
    atomic_write_jsonl(dev_round2, [{"qid": "q3", "counts": {"A": 1, "C": 5}, "n_valid": 6, "n_invalid": 0},
                                    {"qid": "q4", "counts": {"B": 4}, "n_valid": 4, "n_invalid": 2}])
    out = {name: tmp_path / name for name in ("m.json", "a.tsv", "v.tsv")}
    out_json, out_adapters, out_vote_size = map(str, out.values())
    metrics = evaluate(oob_paths=oob, dev_paths=dev, pool_path=str(pool), prediction_paths=preds, round1_path=str(round1),
                       round2_path=str(round2), out_json=out_json, out_adapters=out_adapters, out_vote_size=out_vote_size, draws=10,
                       seed=1, dev_questions_path=str(dev_questions), dev_round2_path=str(dev_round2))
    # dev round 1: q1 A (2 of 3, strict), q2 B (strict), q3 A by the alphabetical tie-break (1 each), q4 A (1 of 3): 3 of 4 right;
    # round 2 re-asked q3 and q4: q3 becomes C (right), q4 becomes B (wrong): still 3 of 4, two answers changed
    assert metrics["dev"]["round2"] == {"questions": 4, "to_round2": 2, "changed_in_round2": 2,
                                        "round1_accuracy": 0.75, "round1_and_round2_accuracy": 0.75}
    assert json.loads(out["m.json"].read_text()) == json.loads(json.dumps(metrics))
    assert metrics["oob"]["per_adapter"]["2"]["n"] == 0  # an adapter with no out-of-bag question
    assert metrics["oob"]["ensemble"] == {"n": 2, "correct": 2, "accuracy": 1.0, "mean_voters": 1.0}
    assert metrics["dev"]["ensemble"]["correct"] == 3 and metrics["dev"]["questions"] == 4
    assert [r["voters"] for r in metrics["dev"]["vote_size_curve"]] == [1, 2, 3]
    assert metrics["baselines"]["questions"] == "dev" and metrics["baselines"]["most_frequent_letter"] == "B"
    assert metrics["baselines"]["most_frequent_accuracy"] == 0.25  # only q2's gold is B
    test = metrics["test"]
    assert (test["to_round2"], test["changed_in_round2"]) == (1, 1)  # t2: no round-1 winner, C in round 2
    assert test["invalid_per_adapter"] == {"0": 1, "1": 1, "2": 1}
    assert sum(b["n"] for b in test["vote_share_histogram"]) == 2
    assert next(b for b in test["vote_share_histogram"] if b["low"] == 0.6)["n"] == 1  # t1: 2 of 3
    rows = out["a.tsv"].read_text().splitlines()
    assert rows[0].startswith("adapter\tsplit\tn") and len(rows) == 1 + 3 + 3
    assert out["v.tsv"].read_text().splitlines()[1].startswith("1\t3\t")


def test_learning_relations_compare_counts_exactly() -> None:
    """A vote equal to the mean adapter holds "vote >= mean adapter", though the float mean lands a last bit above it.

    The counts are a real run's (half-weather sample, seed 7): 21 adapters summing to 21 x 115 correct of 225, vote 115.
    """
    counts = [116, 113, 121, 114, 114, 110, 125, 111, 109, 114, 116, 112, 114, 111, 114, 116, 118, 111, 122, 119, 115]  # adapters 0-20
    n = 225
    assert sum(c / n for c in counts) / len(counts) > 115 / n  # the float mean this guards against
    metrics = {
        "baselines": {"n": n, "most_frequent_correct": 79, "most_frequent_accuracy": 79 / n},
        "dev": {"per_adapter": {str(i): {"n": n, "correct": c, "accuracy": c / n} for i, c in enumerate(counts)},
                "ensemble": {"n": n, "correct": 115, "accuracy": 115 / n}, "round2": {"to_round2": 0}},
        "test": {"to_round2": 1},
    }
    assert all(learning_relations(metrics)["holds"].values())
    metrics["dev"]["ensemble"].update(correct=114, accuracy=114 / n)  # one question fewer: below the mean
    assert not learning_relations(metrics)["holds"]["vote >= mean adapter"]
    # 10 points of 225 are 22.5 questions: a mean 23 questions above the baseline holds, 22 do not
    metrics["baselines"].update(most_frequent_correct=92, most_frequent_accuracy=92 / n)
    assert learning_relations(metrics)["holds"]["mean adapter >= baseline + 0.10"]
    metrics["baselines"].update(most_frequent_correct=93, most_frequent_accuracy=93 / n)
    assert not learning_relations(metrics)["holds"]["mean adapter >= baseline + 0.10"]


def test_lead_by_group_splits_the_votes_lead_over_the_mean_adapter() -> None:
    # "read": each adapter misses a different question, so the vote gets all three (+1/3 each);
    # "habit": a yes/no form answered "A" by two adapters of three, right once and wrong once (+1/3 - 1/3)
    gold = {"r1": "A", "r2": "B", "r3": "C", "h1": "A", "h2": "B"}
    answers = {
        "x": {"r1": "D", "r2": "B", "r3": "C", "h1": "A", "h2": "A"},
        "y": {"r1": "A", "r2": "D", "r3": "C", "h1": "A", "h2": "A"},
        "z": {"r1": "A", "r2": "B", "r3": "D", "h1": "B", "h2": "B"},
    }
    groups = {"r1": "read", "r2": "read", "r3": "read", "h1": "habit", "h2": "habit"}
    lead = lead_by_group(answers, gold, groups)
    assert list(lead) == ["habit", "read"]
    assert lead["read"]["n"] == 3 and lead["read"]["vote"] == 1.0
    assert math.isclose(lead["read"]["mean_share"], 2 / 3) and math.isclose(lead["read"]["lead"], 1.0)
    assert lead["habit"]["vote"] == 0.5 and math.isclose(lead["habit"]["lead"], 0.0, abs_tol=1e-12)
    # the groups' leads add up to (vote - mean adapter) x questions
    mean = sum(a["accuracy"] for a in per_adapter(answers, gold).values()) / len(answers)
    total = sum(g["lead"] for g in lead.values())
    assert math.isclose(total, (ensemble(answers, gold)["accuracy"] - mean) * len(gold))
