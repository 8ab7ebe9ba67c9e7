from __future__ import annotations

import json
from pathlib import Path

import pytest

from logivote.data.contracts import Question
from logivote.data.jsonl import InputError
from logivote.ensemble.voting import (
    build_submission,
    final_answers,
    needs_revote,
    read_predictions,
    tally_round1,
    tally_round2,
    write_submission,
)

from ..conftest import write_jsonl


def q(puzzle: str, index: int, n_options: int = 4) -> Question:
    return Question(qid=f"{puzzle}#{index}", puzzle_id=puzzle, question_index=index, source="t",
                    problem="P", question="Q", options=[str(i) for i in range(n_options)], answer=None)


QUESTIONS = [q("p1", 0), q("p1", 1, n_options=2), q("p2", 0), q("p3", 0)]


def prediction_files(tmp_path: Path, table: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Write one synthetic prediction file per adapter and read it back through the real reader."""
    out = {}
    for adapter, answers in table.items():
        path = write_jsonl(tmp_path / f"{adapter}.jsonl", [{"qid": k, "answer": v, "logprob": -0.1} for k, v in answers.items()])
        out[adapter] = {qid: p["answer"] for qid, p in read_predictions(path).items()}
    return out


def test_round1_majority_ties_invalid_and_skipped(tmp_path: Path) -> None:
    table = {
        "0": {"p1#0": "A", "p1#1": "B", "p2#0": "A", "p3#0": "invalid"},
        "1": {"p1#0": "A", "p1#1": "C", "p2#0": "B", "p3#0": "invalid"},  # C is not an option of p1#1
        "2": {"p1#0": "A", "p1#1": "B", "p2#0": "B"},                     # skipped p3#0
        "3": {"p1#0": "B", "p2#0": "A", "p3#0": "invalid"},               # skipped p1#1
    }
    rows = {row["qid"]: row for row in tally_round1(prediction_files(tmp_path, table), QUESTIONS)}
    assert [r for r in rows] == ["p1#0", "p1#1", "p2#0", "p3#0"]

    assert rows["p1#0"]["counts"] == {"A": 3, "B": 1}
    assert rows["p1#0"]["winner"] == "A" and rows["p1#0"]["share"] == 0.75 and rows["p1#0"]["strict_majority"]

    # 2 of 4 adapters: a majority of the valid votes (2/2) but not of the adapters
    assert (rows["p1#1"]["counts"], rows["p1#1"]["n_valid"], rows["p1#1"]["n_invalid"], rows["p1#1"]["n_missing"]) == ({"B": 2}, 2, 1, 1)
    assert rows["p1#1"]["share"] == 1.0 and not rows["p1#1"]["strict_majority"]

    # a tie: provisional winner alphabetical, never a strict majority
    assert rows["p2#0"]["counts"] == {"A": 2, "B": 2}
    assert rows["p2#0"]["winner"] == "A" and rows["p2#0"]["share"] == 0.5 and not rows["p2#0"]["strict_majority"]

    # all invalid or missing: no winner
    assert rows["p3#0"]["winner"] is None and rows["p3#0"]["share"] == 0.0 and rows["p3#0"]["n_invalid"] == 3
    assert needs_revote(rows.values()) == ["p1#1", "p2#0", "p3#0"]


def test_round2_and_final_answers(tmp_path: Path) -> None:
    table = {str(k): {"p1#0": "C", "p1#1": "A", "p2#0": "A" if k < 2 else "B", "p3#0": "invalid"} for k in range(4)}
    round1 = tally_round1(prediction_files(tmp_path, table), QUESTIONS)
    revote = needs_revote(round1)
    assert revote == ["p2#0", "p3#0"]
    samples = {
        "0": {"p2#0": ["B", "B", "A"], "p3#0": ["D", "invalid"]},
        "1": {"p2#0": ["A", "Z"], "p3#0": ["invalid"]},
        "2": {"p2#0": ["B"]},
    }
    round2 = tally_round2(samples, QUESTIONS, revote)
    assert round2 == [
        {"qid": "p2#0", "counts": {"A": 2, "B": 3}, "n_valid": 5, "n_invalid": 1},
        {"qid": "p3#0", "counts": {"D": 1}, "n_valid": 1, "n_invalid": 2},
    ]
    assert final_answers(round1, round2) == {"p1#0": "C", "p1#1": "A", "p2#0": "B", "p3#0": "D"}


def test_round2_tie_broken_by_round1_then_alphabet() -> None:
    round1 = tally_round1({"0": {"p2#0": "C"}, "1": {"p2#0": "D"}, "2": {"p2#0": "C"}, "3": {"p2#0": "B"}}, [q("p2", 0)])
    tied = tally_round2({"0": {"p2#0": ["B", "C"]}}, [q("p2", 0)], ["p2#0"])
    assert final_answers(round1, tied) == {"p2#0": "C"}  # B and C tie in round 2; C had more in round 1
    round1 = tally_round1({"0": {"p2#0": "invalid"}, "1": {"p2#0": "invalid"}}, [q("p2", 0)])
    tied = tally_round2({"0": {"p2#0": ["D", "B"]}}, [q("p2", 0)], ["p2#0"])
    assert final_answers(round1, tied) == {"p2#0": "B"}


def test_no_valid_round2_vote_keeps_round1_winner_or_none() -> None:
    qs = [q("p2", 0), q("p3", 0)]
    round1 = tally_round1({"0": {"p2#0": "A", "p3#0": "invalid"}, "1": {"p2#0": "B"}}, qs)
    round2 = tally_round2({"0": {"p2#0": ["invalid"], "p3#0": ["invalid"]}}, qs, ["p2#0", "p3#0"])
    assert final_answers(round1, round2) == {"p2#0": "A", "p3#0": None}


def test_missing_round2_row_is_an_error() -> None:
    round1 = tally_round1({"0": {"p2#0": "A"}, "1": {"p2#0": "B"}}, [q("p2", 0)])
    with pytest.raises(ValueError, match="missing from round 2"):
        final_answers(round1, [])


def test_submission_in_input_order(tmp_path: Path) -> None:
    questions = [q("z", 0), q("z", 1), q("a", 0), q("m", 0), q("m", 1), q("m", 2)]
    answers = {"z#0": "B", "z#1": "A", "a#0": "D", "m#0": "A", "m#1": "C", "m#2": "B"}
    out = tmp_path / "submission.jsonl"
    assert write_submission(questions, answers, out) == 3
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": "z", "questions": [{"answer": "B"}, {"answer": "A"}]},
        {"id": "a", "questions": [{"answer": "D"}]},
        {"id": "m", "questions": [{"answer": "A"}, {"answer": "C"}, {"answer": "B"}]},
    ]


@pytest.mark.parametrize("bad", [None, "invalid", "absent"])
def test_submission_refused_when_a_question_lacks_an_answer(tmp_path: Path, bad: str | None) -> None:
    questions = [q("z", 0), q("z", 1)]
    answers: dict[str, str | None] = {"z#0": "B"}
    if bad != "absent":
        answers["z#1"] = bad
    out = tmp_path / "submission.jsonl"
    with pytest.raises(ValueError, match=r"1 test question\(s\) have no answer.*z#1"):
        write_submission(questions, answers, out)
    assert not out.exists()


def test_submission_needs_contiguous_question_indices() -> None:
    with pytest.raises(ValueError, match="question indices"):
        build_submission([q("z", 0), q("z", 2)], {"z#0": "A", "z#2": "A"})


def test_prediction_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "0.jsonl", [{"qid": "a#0", "answer": "A"}, {"qid": "a#0", "answer": "B"}])
    with pytest.raises(InputError, match=rf"^{path}:2: duplicate prediction"):
        read_predictions(path)
    path = write_jsonl(tmp_path / "1.jsonl", [{"qid": "a#0", "answer": None}])
    with pytest.raises(InputError, match=rf"^{path}:1: "):
        read_predictions(path)


def test_no_adapters() -> None:
    with pytest.raises(ValueError, match="no prediction files"):
        tally_round1({}, [q("p", 0)])
