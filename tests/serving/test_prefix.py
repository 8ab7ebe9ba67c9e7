"""Prefix reuse: the prompt keeps a puzzle's shared part first, and requests go out puzzle by puzzle."""

from __future__ import annotations

import os

import pytest

from logivote.data.contracts import Question
from logivote.data.flatten import Source, parse_puzzle
from logivote.data.prompt import chat_messages, prompt_text
from logivote.data.sample_data import make_puzzles
from logivote.serving.client import Ask
from logivote.serving.inference import ServeSettings, prefix_order


def puzzle_questions(n: int = 3) -> list[list[Question]]:
    source = Source("t", "sample.jsonl", "test")
    return [parse_puzzle(dict(p), source, i + 1) for i, p in enumerate(make_puzzles("p", n, seed=5, with_answers=False))]


def test_questions_of_one_puzzle_share_everything_up_to_the_end_of_the_puzzle() -> None:
    for questions in puzzle_questions():
        assert len(questions) >= 2
        first, second = (chat_messages(q) for q in questions[:2])
        assert first[0] == second[0]  # the system turn
        shared = os.path.commonprefix([first[1]["content"], second[1]["content"]])
        # the shared part ends after the puzzle text: instruction and puzzle come before anything question-specific
        assert questions[0]["problem"] in shared
        assert questions[0]["question"] not in shared and questions[1]["question"] not in shared


def test_the_shared_prefix_survives_tokenization() -> None:
    from logivote.base.tiny_model import train_tokenizer

    groups = puzzle_questions()
    tokenizer = train_tokenizer([chat_messages(q)[1]["content"] for qs in groups for q in qs], 2048)
    for questions in groups:
        ids = [tokenizer(prompt_text(tokenizer, q), add_special_tokens=False)["input_ids"] for q in questions]
        rendered = prompt_text(tokenizer, questions[0])
        up_to_puzzle = rendered[: rendered.index(questions[0]["problem"]) + len(questions[0]["problem"])]
        needed = len(tokenizer(up_to_puzzle, add_special_tokens=False)["input_ids"]) - 1  # the last token may merge across the seam
        shared = len(os.path.commonprefix(ids))
        assert shared >= needed, f"{questions[0]['puzzle_id']}: only {shared} of {needed} prefix tokens shared"


def test_requests_go_adapter_by_adapter_and_puzzle_by_puzzle() -> None:
    p, q = puzzle_questions(2)
    interleaved = [Ask(model, model, question, sample=s) for model in ("b", "a") for pair in zip(p, q) for question in pair for s in (1, 0)]
    ordered = prefix_order(interleaved)
    assert sorted(ordered, key=id) == sorted(interleaved, key=id)
    assert [a.model for a in ordered] == ["b"] * (len(ordered) // 2) + ["a"] * (len(ordered) // 2)
    first = ordered[: len(ordered) // 2]
    assert [a.question["qid"] for a in first] == [x["qid"] for x in p for _ in (0, 1)] + [x["qid"] for x in q for _ in (0, 1)]
    assert [a.sample for a in first[:2]] == [0, 1]


@pytest.mark.parametrize("block_size, flag", [(32, ["--block-size", "32"]), (None, [])])
def test_server_flags_for_prefix_caching(block_size: int | None, flag: list[str]) -> None:
    argv = ServeSettings(block_size=block_size).spec("m", {"a": "x"}).argv(1234)
    assert "--enable-prefix-caching" in argv
    assert (argv[argv.index("--block-size"):argv.index("--block-size") + 2] if block_size else [a for a in argv if a == "--block-size"]) == flag
    assert "--no-enable-prefix-caching" in ServeSettings(prefix_caching=False).spec("m", {}).argv(1)
