"""Stage 4, ensemble (recipe step 5): majority vote over adapters, a second round for close calls, submission.

Round 1 (:func:`tally_round1`)
    Each adapter casts one vote per question: a letter of that question's
    options, or ``"invalid"`` (so does any letter outside the options). An
    adapter whose prediction file lacks the question is *missing*. The winner is
    the letter with the most votes (ties broken alphabetically, provisionally);
    ``share`` is its fraction of the valid votes. It is a **strict majority**
    when its votes are more than half of *all adapters*
    (``2 * votes > n_adapters``): invalid and missing votes count against it,
    so a question few adapters answered goes to round 2.

Round 2 (:func:`tally_round2`, :func:`final_answers`)
    Only questions without a strict majority are asked again; every valid
    round-2 vote counts (all samples of all adapters), invalid ones are
    dropped. The final answer is the round-2 letter with the most votes; a tie
    is broken by the round-1 counts, then alphabetically. With no valid round-2
    vote the round-1 winner stands. A question with no valid vote in either
    round has no answer, and :func:`write_submission` refuses to write.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..data.contracts import INVALID, Prediction, Question, Round1Row, Round2Row, SubmissionPuzzle, adapter_name, letters_for
from ..data.flatten import read_questions
from ..data.jsonl import InputError, atomic_write_jsonl, iter_jsonl, read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoteSettings:
    """Config key ``vote`` (config/README.md): round 2's samples per adapter and question, their temperature, and the
    base of their seeds."""

    round2_samples: int = 3
    round2_temperature: float = 0.8
    seed: int = 2024


def read_predictions(path: str | os.PathLike[str]) -> dict[str, Prediction]:
    """Read one adapter's prediction file (see :class:`~logivote.data.contracts.Prediction`)."""
    out: dict[str, Prediction] = {}
    for line, obj in iter_jsonl(path):
        qid = obj.get("qid")
        answer = obj.get("answer")
        if not isinstance(qid, str) or not qid:
            raise InputError(path, line, "prediction: missing or empty 'qid'")
        if not isinstance(answer, str):
            raise InputError(path, line, f"prediction {qid}: 'answer' must be a string, got {answer!r}")
        if qid in out:
            raise InputError(path, line, f"duplicate prediction for question {qid!r}")
        logprob = obj.get("logprob")
        out[qid] = Prediction(qid=qid, answer=answer, logprob=logprob if isinstance(logprob, (int, float)) else None)
    return out


def _ordered_counts(votes: Iterable[str], letters: Sequence[str]) -> dict[str, int]:
    counter = Counter(votes)
    return {letter: counter[letter] for letter in letters if counter[letter]}


def top_letter(counts: Mapping[str, float], tiebreak: Mapping[str, int] | None = None) -> str | None:
    """Letter with most votes; ties by ``tiebreak`` counts, then alphabetically."""
    if not counts:
        return None
    tiebreak = tiebreak or {}
    return min(counts, key=lambda letter: (-counts[letter], -tiebreak.get(letter, 0), letter))


def tally_round1(adapter_answers: Mapping[str, Mapping[str, str]], questions: Sequence[Question]) -> list[Round1Row]:
    """Round-1 table, one row per question in ``questions`` order.

    ``adapter_answers`` maps adapter name → {qid: letter or "invalid"}.
    """
    n_adapters = len(adapter_answers)
    if n_adapters == 0:
        raise ValueError("no prediction files to vote over")
    rows: list[Round1Row] = []
    for question in questions:
        letters = letters_for(len(question["options"]))
        valid: list[str] = []
        n_invalid = n_missing = 0
        for answers in adapter_answers.values():
            answer = answers.get(question["qid"])
            if answer is None:
                n_missing += 1
            elif answer in letters:
                valid.append(answer)
            else:
                n_invalid += 1
        counts = _ordered_counts(valid, letters)
        winner = top_letter(counts)
        top_votes = counts.get(winner, 0) if winner else 0
        rows.append(
            Round1Row(
                qid=question["qid"],
                counts=counts,
                n_adapters=n_adapters,
                n_valid=len(valid),
                n_invalid=n_invalid,
                n_missing=n_missing,
                winner=winner,
                share=top_votes / len(valid) if valid else 0.0,
                strict_majority=2 * top_votes > n_adapters,
            )
        )
    return rows


def needs_revote(rows: Iterable[Round1Row]) -> list[str]:
    """Question ids that go to round 2, in table order."""
    return [row["qid"] for row in rows if not row["strict_majority"]]


def tally_round2(samples: Mapping[str, Mapping[str, Sequence[str]]], questions: Sequence[Question], qids: Sequence[str]) -> list[Round2Row]:
    """Round-2 table for ``qids``: ``samples`` maps adapter → {qid: [letter or "invalid", ...]}."""
    by_id = {q["qid"]: q for q in questions}
    rows: list[Round2Row] = []
    for qid in qids:
        letters = letters_for(len(by_id[qid]["options"]))
        votes = [answer for per_adapter in samples.values() for answer in per_adapter.get(qid, ())]
        valid = [answer for answer in votes if answer in letters]
        rows.append(Round2Row(qid=qid, counts=_ordered_counts(valid, letters), n_valid=len(valid), n_invalid=len(votes) - len(valid)))
    return rows


def final_answers(round1: Sequence[Round1Row], round2: Sequence[Round2Row]) -> dict[str, str | None]:
    """Final letter per question id (``None``: no valid vote in either round). Rule: module docstring."""
    second = {row["qid"]: row for row in round2}
    answers: dict[str, str | None] = {}
    for row in round1:
        qid = row["qid"]
        if row["strict_majority"]:
            answers[qid] = row["winner"]
            continue
        if qid not in second:
            raise ValueError(f"question {qid} had no strict majority in round 1 but is missing from round 2")
        answers[qid] = top_letter(second[qid]["counts"], tiebreak=row["counts"]) or row["winner"]
    return answers


def build_submission(questions: Sequence[Question], answers: Mapping[str, str | None]) -> list[SubmissionPuzzle]:
    """Competition records, one per puzzle in first-appearance order, questions in index order."""
    missing = [q["qid"] for q in questions if not answers.get(q["qid"]) or answers[q["qid"]] == INVALID]
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} test question(s) have no answer; refusing to write a submission: {shown}")
    puzzles: dict[str, list[Question]] = {}
    for question in questions:
        puzzles.setdefault(question["puzzle_id"], []).append(question)
    out: list[SubmissionPuzzle] = []
    for puzzle_id, items in puzzles.items():
        items = sorted(items, key=lambda q: q["question_index"])
        if [q["question_index"] for q in items] != list(range(len(items))):
            raise ValueError(f"puzzle {puzzle_id}: question indices are not 0..{len(items) - 1}")
        out.append(SubmissionPuzzle(id=puzzle_id, questions=[{"answer": answers[q["qid"]] or ""} for q in items]))
    return out


def write_submission(questions: Sequence[Question], answers: Mapping[str, str | None], path: str | os.PathLike[str]) -> int:
    """Write ``results/submission.jsonl``; nothing is written if any question lacks an answer."""
    records = build_submission(questions, answers)
    n = atomic_write_jsonl(path, records)
    log.info("wrote %d puzzles (%d questions) to %s", n, len(questions), path)
    return n


def vote(*, test_path: str, prediction_paths: Mapping[int, str], out_path: str) -> list[Round1Row]:
    """Rule ``vote``: the round-1 table."""
    questions = read_questions(test_path)
    table = {adapter_name(k): {qid: p["answer"] for qid, p in read_predictions(path).items()} for k, path in prediction_paths.items()}
    rows = tally_round1(table, questions)
    atomic_write_jsonl(out_path, rows)
    log.info("round 1: %d questions, %d with a strict majority, %d go to round 2",
             len(rows), sum(r["strict_majority"] for r in rows), len(needs_revote(rows)))
    return rows


def submission(*, test_path: str, round1_path: str, round2_path: str, out_path: str) -> None:
    """Rule ``submission``: final answers (rule in :mod:`logivote.ensemble.voting`) in the competition format."""
    answers = final_answers(read_rows(round1_path), read_rows(round2_path))  # type: ignore[arg-type]
    write_submission(read_questions(test_path), answers, out_path)
