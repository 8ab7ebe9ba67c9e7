from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from logivote.data.flatten import Source, flatten, read_questions
from logivote.data.jsonl import InputError

from ..conftest import run_snakemake, write_jsonl


def puzzle(pid: str = "p0", **question_overrides: object) -> dict:
    question = {"question": "谁最高？", "options": ["甲", "乙", "丙"], "answer": "B"}
    question.update(question_overrides)
    return {"id": pid, "problem": "三个人比较身高。", "questions": [question, {"question": "谁最矮？", "options": ["甲", "乙"], "answer": "A"}]}


def run(tmp_path: Path, train: Path, test: Path | None = None) -> dict:
    sources = [Source("train", str(train), "train")]
    if test is not None:
        sources.append(Source("test", str(test), "test"))
    return flatten(sources, tmp_path / "out" / "train.jsonl", tmp_path / "out" / "test.jsonl")


def test_flatten_one_question_per_line_with_stable_ids(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [puzzle("a"), puzzle("b")])
    test_puzzle = puzzle("t")
    for q in test_puzzle["questions"]:
        del q["answer"]
    test = write_jsonl(tmp_path / "test.jsonl", [test_puzzle])
    assert run(tmp_path, train, test) == {"train": 4, "test": 2}
    questions = read_questions(tmp_path / "out" / "train.jsonl")
    assert [q["qid"] for q in questions] == ["a#0", "a#1", "b#0", "b#1"]
    assert questions[0] == {
        "qid": "a#0", "puzzle_id": "a", "question_index": 0, "source": "train", "problem": "三个人比较身高。",
        "question": "谁最高？", "options": ["甲", "乙", "丙"], "answer": "B",
    }
    tests = read_questions(tmp_path / "out" / "test.jsonl")
    assert [q["answer"] for q in tests] == [None, None]


def test_blank_lines_and_trailing_newline_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + json.dumps(puzzle("a")) + "\n\n  \n" + json.dumps(puzzle("b")) + "\n\n", encoding="utf-8")
    assert run(tmp_path, path)["train"] == 4


def good_line() -> str:
    return json.dumps(puzzle("ok"), ensure_ascii=False)


def without(key: str) -> dict:
    p = puzzle("bad")
    del p[key]
    return p


def question_without(key: str) -> dict:
    p = puzzle("bad")
    del p["questions"][0][key]
    return p


# kind → (second line of the training file, words the error must contain)
BAD_INPUT = {
    "invalid_json": ('{"id": "bad", "problem": ', "invalid JSON"),
    "not_an_object": ('["a", "list"]', "expected a JSON object"),
    "missing_problem": (json.dumps(without("problem")), "'problem'"),
    "missing_questions": (json.dumps(without("questions")), "'questions'"),
    "missing_question": (json.dumps(question_without("question")), "'question'"),
    "missing_options": (json.dumps(question_without("options")), "'options'"),
    "empty_options": (json.dumps(puzzle("bad", options=[])), "'options' must be a non-empty list"),
    "options_not_a_list": (json.dumps(puzzle("bad", options="A B C")), "'options' must be a non-empty list"),
    "too_many_options": (json.dumps(puzzle("bad", options=[str(i) for i in range(27)], answer="A")), "more than the 26 letters"),
    "answer_not_a_letter_of_options": (json.dumps(puzzle("bad", answer="D")), "answer 'D' is not one of its option letters ABC"),
    "missing_answer_in_training": (json.dumps(question_without("answer")), "training data needs an 'answer'"),
    # a wrong type is named with the value that is there instead
    "id_is_an_integer": (json.dumps({**puzzle("bad"), "id": 5}), "puzzle: 'id' must be a string, and this one is the integer 5"),
    "missing_id": (json.dumps(without("id")), "puzzle: missing key 'id'"),
    "empty_id": (json.dumps({**puzzle("bad"), "id": " "}), "puzzle: 'id' is an empty string"),
    "problem_is_a_list": (json.dumps({**puzzle("bad"), "problem": ["x"]}), "'problem' must be a string, and this one is the list ['x']"),
    "questions_is_an_object": (json.dumps({**puzzle("bad"), "questions": {"a": 1}}),
                               "'questions' must be a non-empty list, and this one is the object {'a': 1}"),
    "question_is_a_string": (json.dumps({**puzzle("bad"), "questions": ["what?"]}),
                             "question 0: each question must be an object, and this one is the string 'what?'"),
    "question_text_is_null": (json.dumps(puzzle("bad", question=None)), "'question' must be a string, and this one is null"),
    "option_is_a_number": (json.dumps(puzzle("bad", options=["x", 2, "z"])), "option B must be a string, and this one is the integer 2"),
    "answer_is_an_integer": (json.dumps(puzzle("bad", answer=1)),
                             "'answer' must be a letter string (one of ABC), and this one is the integer 1"),
    "answer_is_a_list": (json.dumps(puzzle("bad", answer=["A"])), "and this one is the list ['A']"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUT))
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    line, words = BAD_INPUT[kind]
    path = tmp_path / "train.jsonl"
    path.write_text(good_line() + "\n" + line + "\n" + good_line().replace('"ok"', '"ok2"') + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        run(tmp_path, path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert words in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """Files saved by Windows editors start with a BOM: read as UTF-8 with or without it."""
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good_line().encode() + b"\n" + good_line().replace('"ok"', '"ok2"').encode() + b"\n")
    assert run(tmp_path, path)["train"] == 4  # two puzzles of two questions
    assert not read_questions(tmp_path / "out" / "train.jsonl")[0]["qid"].startswith("\ufeff")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_line().encode() + b"\n" + good_line().replace('"ok"', '"ok2"').encode("gbk"))
    with pytest.raises(InputError, match=rf"^{path}:2: not valid UTF-8"):
        run(tmp_path, path)
    assert not (tmp_path / "out").exists()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{path}: file is empty"):
        run(tmp_path, path)
    assert not (tmp_path / "out").exists()


def test_duplicate_puzzle_ids_across_sources(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [puzzle("a"), puzzle("b")])
    other = write_jsonl(tmp_path / "other.jsonl", [puzzle("c"), puzzle("a")])
    sources = [Source("one", str(train), "train"), Source("two", str(other), "train")]
    with pytest.raises(InputError) as info:
        flatten(sources, tmp_path / "out" / "train.jsonl", tmp_path / "out" / "test.jsonl")
    assert str(info.value).startswith(f"{other}:2: duplicate puzzle id 'a', first seen at {train}:1")
    assert not (tmp_path / "out").exists()


def test_test_data_may_lack_answers_but_not_have_bad_ones(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [puzzle("a")])
    test = write_jsonl(tmp_path / "test.jsonl", [puzzle("t", answer="Z")])
    with pytest.raises(InputError, match=rf"^{test}:1: .*answer 'Z'"):
        run(tmp_path, train, test)


def test_rule_reports_file_line_and_leaves_no_output(workflow_copy: Path) -> None:
    bad = workflow_copy / "resources" / "data" / "sample_train.jsonl"
    lines = bad.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-1]  # line 5: cut the closing brace
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_snakemake(workflow_copy, "results/data/train.jsonl")
    assert result.returncode != 0
    assert "resources/data/sample_train.jsonl:5: invalid JSON" in result.stderr
    assert "resources/data/sample_train.jsonl:5: invalid JSON" in (workflow_copy / "logs" / "flatten.log").read_text()
    assert not (workflow_copy / "results" / "data" / "train.jsonl").exists()
    assert not (workflow_copy / "results" / "data" / "test.jsonl").exists()


def test_a_full_disk_names_itself_and_leaves_nothing_that_looks_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 44 point 2: ENOSPC inside the atomic writers (a file, a folder) leaves no output under its final name and no
    temporary file, and the error says the disk is full and where; once space returns the same write completes."""
    import errno

    from logivote.data import jsonl

    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "results" / "votes.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(jsonl.os, "fsync", no_space)
        with pytest.raises(jsonl.DiskFull, match=r"votes\.jsonl: the disk is full \(no space left on the device holding .*results"):
            jsonl.atomic_write_jsonl(target, [{"a": 1}])
    assert list(target.parent.iterdir()) == []
    jsonl.atomic_write_jsonl(target, [{"a": 1}])  # space is back
    assert target.read_text() == '{"a":1}\n'

    folder = tmp_path / "results" / "adapters" / "0"
    with pytest.raises(jsonl.DiskFull, match=r"adapters/0: the disk is full"):
        with jsonl.atomic_directory(folder) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            no_space()  # a writer inside the folder runs out of space
    assert list(folder.parent.iterdir()) == []


def test_atomic_writers_give_results_the_modes_of_a_plain_write(tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700; a results file or folder gets what open()/mkdir() would (umask applied)."""
    import stat

    from logivote.data import jsonl

    old = os.umask(0o027)
    try:
        jsonl.atomic_write_text(tmp_path / "a.txt", "x")
        with jsonl.atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750
