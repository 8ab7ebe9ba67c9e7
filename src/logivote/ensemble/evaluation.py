"""How good the ensemble is, from answers with known gold letters (issue 11, first part: the metrics).

Inputs are plain mappings, so every metric can be checked on hand-made cases:
``answers[adapter][qid]`` is an adapter's answer (a letter, or ``"invalid"``),
``gold[qid]`` the right letter, ``n_options[qid]`` how many options a question
has. A question an adapter did not answer is simply absent from its mapping.

Votes follow round 1 of :mod:`logivote.ensemble.voting`: every valid letter is one vote,
the winner has the most votes, ties go to the alphabetically first letter; a
question with no valid vote has no winner and counts as wrong. The
logprob-weighted rule instead adds each vote's probability ``exp(logprob)``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..data.contracts import INVALID
from ..data.jsonl import read_rows
from .voting import final_answers, read_predictions, tally_round1, top_letter

log = logging.getLogger(__name__)

Answers = Mapping[str, Mapping[str, str]]


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def per_adapter(answers: Answers, gold: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Accuracy with its Wilson interval, invalid count and answer-letter distribution, per adapter.

    Only questions with a gold letter count; an adapter with none has ``n = 0`` and accuracy ``None``.
    """
    out: dict[str, dict[str, Any]] = {}
    for adapter, given in answers.items():
        scored = {qid: a for qid, a in given.items() if qid in gold}
        correct = sum(a == gold[qid] for qid, a in scored.items())
        lo, hi = wilson(correct, len(scored))
        out[adapter] = {
            "n": len(scored),
            "correct": correct,
            "accuracy": correct / len(scored) if scored else None,
            "wilson_low": lo,
            "wilson_high": hi,
            "invalid": sum(a == INVALID for a in scored.values()),
            "letters": dict(sorted(Counter(a for a in scored.values() if a != INVALID).items())),
        }
    return out


def winner(votes: Sequence[str], weights: Sequence[float] | None = None) -> str | None:
    """The letter with the most (weighted) valid votes; ties alphabetically; ``None`` without a valid vote."""
    totals: dict[str, float] = {}
    for i, vote in enumerate(votes):
        if vote != INVALID:
            totals[vote] = totals.get(vote, 0.0) + (1.0 if weights is None else weights[i])
    return top_letter(totals)


def ensemble(answers: Answers, gold: Mapping[str, str], voters: Sequence[str] | None = None,
             logprobs: Mapping[str, Mapping[str, float | None]] | None = None) -> dict[str, Any]:
    """Accuracy of the vote of ``voters`` (default: all) on every gold question at least one of them answered.

    With ``logprobs`` (same layout as ``answers``) each vote weighs its probability; a vote
    without a logprob weighs 1. Returns accuracy, n, and the mean number of voters per question.
    """
    chosen = list(answers) if voters is None else list(voters)
    correct = n = n_votes = 0
    for qid, right in gold.items():
        votes = [(v, answers[v][qid]) for v in chosen if qid in answers[v]]
        if not votes:
            continue
        weights = None
        if logprobs is not None:
            weights = [math.exp(lp) if (lp := logprobs.get(a, {}).get(qid)) is not None else 1.0 for a, _ in votes]
        n += 1
        n_votes += len(votes)
        correct += winner([v for _, v in votes], weights) == right
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None, "mean_voters": n_votes / n if n else 0.0}


def vote_size_curve(answers: Answers, gold: Mapping[str, str], sizes: Sequence[int] | None = None,
                    draws: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Ensemble accuracy against the number of voters: for each n, ``draws`` random sets of n adapters.

    Returns, per n, the mean and the 10th/90th percentiles of accuracy over the draws (all
    ``C(N, n)`` sets when there are fewer than ``draws``). Sizes above the number of adapters are skipped.
    """
    names = sorted(answers)
    rng = random.Random(seed)
    out = []
    for n in sizes or range(1, len(names) + 1):
        if not 1 <= n <= len(names):
            continue
        if math.comb(len(names), n) <= draws:
            from itertools import combinations

            sets = [list(c) for c in combinations(names, n)]
        else:
            sets = [rng.sample(names, n) for _ in range(draws)]
        scores = sorted(ensemble(answers, gold, s)["accuracy"] or 0.0 for s in sets)
        out.append({"voters": n, "sets": len(sets), "mean": sum(scores) / len(scores),
                    "p10": _quantile(scores, 0.1), "p90": _quantile(scores, 0.9)})
    return out


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def by_vote_share(answers: Answers, gold: Mapping[str, str], edges: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> list[dict[str, Any]]:
    """Ensemble accuracy by the winner's share of all adapters' votes (is a 12-of-21 majority trustworthy?).

    Bucket ``[edges[i-1], edges[i])`` (the last one closed); shares below the first edge form the first bucket.
    """
    adapters = list(answers)
    buckets: list[dict[str, Any]] = [{"low": lo, "high": hi, "n": 0, "correct": 0}
                                     for lo, hi in zip((0.0, *edges[:-1]), edges)]
    for qid, right in gold.items():
        votes = [answers[a][qid] for a in adapters if qid in answers[a]]
        top = winner(votes)
        if top is None:
            continue
        share = sum(v == top for v in votes) / len(adapters)
        bucket = next((b for b in buckets if b["low"] <= share < b["high"]), buckets[-1])
        bucket["n"] += 1
        bucket["correct"] += top == right
    for bucket in buckets:
        bucket["accuracy"] = bucket["correct"] / bucket["n"] if bucket["n"] else None
    return buckets


def lead_by_group(answers: Answers, gold: Mapping[str, str], group_of: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Where the vote's lead over the mean adapter comes from: per group of gold questions (``group_of[qid]``).

    For each group: ``n`` questions, ``mean_share`` (the share of all adapters right, averaged over its
    questions; an unanswered question counts as wrong), ``vote`` (the vote's accuracy, :func:`winner`) and
    ``lead``, the sum over its questions of (vote right − share right), in questions. The leads of all
    groups add up to (vote − mean adapter) × the number of questions, when every adapter answered every one.
    """
    adapters = list(answers)
    out: dict[str, dict[str, Any]] = {}
    for qid, right in gold.items():
        votes = [answers[a][qid] for a in adapters if qid in answers[a]]
        share = sum(v == right for v in votes) / len(adapters) if adapters else 0.0
        vote_right = winner(votes) == right
        group = out.setdefault(group_of[qid], {"n": 0, "share_sum": 0.0, "vote_correct": 0})
        group["n"] += 1
        group["share_sum"] += share
        group["vote_correct"] += vote_right
    return {name: {"n": g["n"], "mean_share": g["share_sum"] / g["n"], "vote": g["vote_correct"] / g["n"],
                   "lead": g["vote_correct"] - g["share_sum"]} for name, g in sorted(out.items())}


def baselines(gold: Mapping[str, str], n_options: Mapping[str, int], train_letters: Sequence[str]) -> dict[str, Any]:
    """What no model needs: always the most frequent training letter, and the expected accuracy of uniform guessing."""
    if not gold:
        return {"n": 0, "most_frequent_letter": None, "most_frequent_correct": None, "most_frequent_accuracy": None,
                "uniform_random_accuracy": None}
    counts = Counter(train_letters)
    letter = min(counts, key=lambda x: (-counts[x], x)) if counts else "A"
    correct = sum(g == letter for g in gold.values())
    return {
        "n": len(gold),
        "most_frequent_letter": letter,
        "most_frequent_correct": correct,
        "most_frequent_accuracy": correct / len(gold),
        "uniform_random_accuracy": sum(1 / n_options[qid] for qid in gold) / len(gold),
    }


def pairwise_agreement(answers: Answers) -> dict[str, dict[str, float | None]]:
    """Share of the questions two adapters both answered validly on which they gave the same letter."""
    names = list(answers)
    out: dict[str, dict[str, float | None]] = {}
    for a in names:
        out[a] = {}
        for b in names:
            common = [q for q in answers[a] if q in answers[b] and INVALID not in (answers[a][q], answers[b][q])]
            out[a][b] = sum(answers[a][q] == answers[b][q] for q in common) / len(common) if common else None
    return out


RECIPE_VOTE_SIZES = (15, 17, 19, 21, 25)  # the vote sizes the recipe's authors tried


def answer_tables(paths: Mapping[int, str]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float | None]], dict[str, str], dict[str, int]]:
    """Scored answer files (``{k: path}``, rows with qid, answer, logprob, gold, n_options) as the metrics' mappings:
    answers and logprobs by adapter name ``str(k)``, gold letters and option counts by question."""
    answers: dict[str, dict[str, str]] = {}
    logprobs: dict[str, dict[str, float | None]] = {}
    gold: dict[str, str] = {}
    n_options: dict[str, int] = {}
    for k, path in sorted(paths.items()):
        name = str(k)
        answers[name], logprobs[name] = {}, {}
        for row in read_rows(path):
            answers[name][row["qid"]] = row["answer"]
            logprobs[name][row["qid"]] = row["logprob"]
            gold[row["qid"]] = row["gold"]
            n_options[row["qid"]] = row["n_options"]
    return answers, logprobs, gold, n_options


def test_set_diagnostics(prediction_paths: Mapping[int, str], round1: Sequence[Mapping[str, Any]], round2: Sequence[Mapping[str, Any]],
                     final: Mapping[str, str | None]) -> dict[str, Any]:
    """No gold needed: round-1 vote shares, round 2's reach, invalid answers, agreement between adapters."""
    answers = {str(k): {qid: p["answer"] for qid, p in read_predictions(path).items()} for k, path in sorted(prediction_paths.items())}
    shares = [row["counts"].get(row["winner"], 0) / row["n_adapters"] if row["winner"] else 0.0 for row in round1]
    histogram = [{"low": i / 10, "high": (i + 1) / 10, "n": sum(i / 10 <= s < (i + 1) / 10 or (i == 9 and s == 1.0) for s in shares)}
                 for i in range(10)]
    winners = {row["qid"]: row["winner"] for row in round1}
    return {
        "questions": len(round1),
        "vote_share_histogram": histogram,
        "to_round2": len(round2),
        "changed_in_round2": sum(final.get(row["qid"]) != winners.get(row["qid"]) for row in round2),
        "invalid_per_adapter": {a: sum(v == INVALID for v in given.values()) for a, given in answers.items()},
        "pairwise_agreement": pairwise_agreement(answers),
    }


def round2_value(dev_questions: Sequence[Mapping[str, Any]], dev: Answers, dev_round2: Sequence[Mapping[str, Any]],
                 gold: Mapping[str, str]) -> dict[str, Any]:
    """Dev accuracy of round 1 alone against round 1 + round 2 (the configured rule of :mod:`logivote.ensemble.voting`)."""
    round1 = tally_round1(dev, dev_questions)  # type: ignore[arg-type]
    final = final_answers(round1, dev_round2)  # type: ignore[arg-type]
    first = {row["qid"]: row["winner"] for row in round1}
    n = len(gold)
    return {
        "questions": n,
        "to_round2": len(dev_round2),
        "changed_in_round2": sum(final.get(row["qid"]) != first.get(row["qid"]) for row in dev_round2),
        "round1_accuracy": sum(first.get(q) == g for q, g in gold.items()) / n if n else None,
        "round1_and_round2_accuracy": sum(final.get(q) == g for q, g in gold.items()) / n if n else None,
    }


def evaluate(*, oob_paths: Mapping[int, str], dev_paths: Mapping[int, str], pool_path: str, prediction_paths: Mapping[int, str],
             round1_path: str, round2_path: str, out_json: str, out_adapters: str, out_vote_size: str,
             draws: int = 100, seed: int = 0, dev_questions_path: str | None = None, dev_round2_path: str | None = None,
             serving_path: str | None = None) -> dict[str, Any]:
    """Rule ``evaluate``: ``results/eval/metrics.json`` and its two tables (contract in :mod:`logivote.data.contracts`)."""
    from ..data.flatten import read_questions
    from ..data.jsonl import atomic_write_text

    oob, _, oob_gold, oob_options = answer_tables(oob_paths)
    dev, dev_logprobs, dev_gold, dev_options = answer_tables(dev_paths)
    train_letters = [str(q["answer"]) for q in read_questions(pool_path)]
    round1, round2 = read_rows(round1_path), read_rows(round2_path)
    scored_gold, scored_options = (dev_gold, dev_options) if dev_gold else (oob_gold, oob_options)
    metrics: dict[str, Any] = {
        "note": ("Bagging is by question: an out-of-bag question's sibling questions (same puzzle text) were trained on, "
                 "so out-of-bag accuracy is optimistic. Dev puzzles are in no bag: no such leak."),
        "serving": json.loads(Path(serving_path).read_text()) if serving_path else None,
        "oob": {"per_adapter": per_adapter(oob, oob_gold), "ensemble": ensemble(oob, oob_gold)},
        "dev": None,
        "baselines": {"questions": "dev" if dev_gold else "oob", **baselines(scored_gold, scored_options, train_letters)},
        "test": test_set_diagnostics(prediction_paths, round1, round2, final_answers(round1, round2)),  # type: ignore[arg-type]
    }
    if dev_gold:
        curve = vote_size_curve(dev, dev_gold, draws=draws, seed=seed)
        for row in curve:
            row["recipe_size"] = row["voters"] in RECIPE_VOTE_SIZES
        metrics["dev"] = {
            "questions": len(dev_gold),
            "per_adapter": per_adapter(dev, dev_gold),
            "ensemble": ensemble(dev, dev_gold),
            "ensemble_logprob_weighted": ensemble(dev, dev_gold, logprobs=dev_logprobs),
            "vote_size_curve": curve,
            "by_vote_share": by_vote_share(dev, dev_gold),
            "round2": (round2_value(read_questions(dev_questions_path), dev, read_rows(dev_round2_path), dev_gold)
                       if dev_questions_path and dev_round2_path else None),
        }
    atomic_write_text(out_json, json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
    header = "adapter\tsplit\tn\tcorrect\taccuracy\twilson_low\twilson_high\tinvalid\tletters\n"
    lines = [f"{a}\t{split}\t{m['n']}\t{m['correct']}\t{_fmt(m['accuracy'])}\t{m['wilson_low']:.4f}\t{m['wilson_high']:.4f}\t{m['invalid']}\t"
             + ",".join(f"{k}:{v}" for k, v in m["letters"].items()) + "\n"
             for split, block in (("oob", metrics["oob"]), ("dev", metrics["dev"])) if block
             for a, m in block["per_adapter"].items()]
    atomic_write_text(out_adapters, header + "".join(lines))
    curve_rows = metrics["dev"]["vote_size_curve"] if metrics["dev"] else []
    atomic_write_text(out_vote_size, "voters\tsets\tmean\tp10\tp90\trecipe_size\n" + "".join(
        f"{r['voters']}\t{r['sets']}\t{r['mean']:.4f}\t{r['p10']:.4f}\t{r['p90']:.4f}\t{str(r['recipe_size']).lower()}\n" for r in curve_rows))
    log.info("out-of-bag ensemble accuracy %s on %d questions; dev ensemble %s; baselines: most frequent letter %s, uniform %s",
             _fmt(metrics["oob"]["ensemble"]["accuracy"]), metrics["oob"]["ensemble"]["n"],
             _fmt(metrics["dev"]["ensemble"]["accuracy"]) if metrics["dev"] else "(no dev split)",
             _fmt(metrics["baselines"]["most_frequent_accuracy"]), _fmt(metrics["baselines"]["uniform_random_accuracy"]))
    return metrics


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def learning_relations(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded default's learning relations (README "What the default shows"), from ``metrics.json``.

    Every adapter beats the most-frequent-letter baseline on dev; the mean adapter beats it by at least
    10 points; the vote of all adapters is at least the mean adapter; round 2 re-asks at least one test
    or dev question. ``holds`` maps each relation to whether it held; the figures are beside them.
    """
    baseline = metrics["baselines"]["most_frequent_accuracy"]
    dev = metrics["dev"]
    accuracies = [a["accuracy"] for a in dev["per_adapter"].values()]
    mean = sum(accuracies) / len(accuracies)
    vote = dev["ensemble"]["accuracy"]
    # compared in exact fractions of the counts: 21 float accuracies summed can land a last bit above a vote
    # that equals their mean exactly (115 of 225 against adapters summing to 21 x 115)
    exact = [Fraction(a["correct"], a["n"]) for a in dev["per_adapter"].values()]
    exact_mean = sum(exact, Fraction(0)) / len(exact)
    exact_vote = Fraction(dev["ensemble"]["correct"], dev["ensemble"]["n"])
    exact_baseline = Fraction(metrics["baselines"]["most_frequent_correct"], metrics["baselines"]["n"])
    round2_test = metrics["test"]["to_round2"]
    round2_dev = (dev.get("round2") or {}).get("to_round2", 0)
    return {
        "baseline": baseline, "min_adapter": min(accuracies), "mean_adapter": mean, "vote": vote,
        "round2_test": round2_test, "round2_dev": round2_dev,
        "holds": {
            "every adapter > baseline": all(a > exact_baseline for a in exact),
            "mean adapter >= baseline + 0.10": exact_mean >= exact_baseline + Fraction(1, 10),
            "vote >= mean adapter": exact_vote >= exact_mean,
            "round 2 re-asks >= 1 question": round2_test + round2_dev >= 1,
        },
    }

