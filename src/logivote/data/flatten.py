"""Stage 1, data (recipe step 1): raw competition puzzles → one question per line.

Raw format (one puzzle per line)::

    {"id": str, "problem": str,
     "questions": [{"question": str, "options": [str, ...], "answer": "A"}, ...]}

Test files have no ``answer``. The output is :class:`logivote.data.contracts.Question`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .contracts import LETTERS, Question, letters_for
from .jsonl import InputError, atomic_write_jsonl, iter_jsonl

log = logging.getLogger(__name__)

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Source:
    """One configured raw file: a name (kept on every question), a path and its split."""

    name: str
    path: str
    split: Split


JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object", type(None): "null"}


def describe(value: Any) -> str:
    """What a JSON value is, for an error message: ``the integer 5``, ``the string '…'``, ``null``."""
    kind = JSON_TYPES.get(type(value), type(value).__name__)
    return "null" if value is None else f"the {kind} {value!r:.60}"


def _require(obj: dict[str, Any], key: str, where: str, path: str, line: int) -> Any:
    if key not in obj:
        raise InputError(path, line, f"{where}: missing key {key!r}")
    return obj[key]


def _require_str(obj: dict[str, Any], key: str, where: str, path: str, line: int) -> str:
    value = _require(obj, key, where, path, line)
    if not isinstance(value, str):
        raise InputError(path, line, f"{where}: {key!r} must be a string, and this one is {describe(value)}")
    if not value.strip():
        raise InputError(path, line, f"{where}: {key!r} is an empty string")
    return value


def _require_list(obj: dict[str, Any], key: str, where: str, path: str, line: int) -> list[Any]:
    value = _require(obj, key, where, path, line)
    if not isinstance(value, list):
        raise InputError(path, line, f"{where}: {key!r} must be a non-empty list, and this one is {describe(value)}")
    if not value:
        raise InputError(path, line, f"{where}: {key!r} must be a non-empty list, and this one is empty")
    return value


def parse_puzzle(obj: dict[str, Any], source: Source, line: int) -> list[Question]:
    """Validate one raw puzzle and return its questions, flattened. Each message names the field and,
    for a wrong type, what the field holds instead (``'id' must be a string, and this one is the integer 5``)."""
    path = source.path
    puzzle_id = _require_str(obj, "id", "puzzle", path, line)
    problem = _require_str(obj, "problem", f"puzzle {puzzle_id}", path, line)
    raw_questions = _require_list(obj, "questions", f"puzzle {puzzle_id}", path, line)

    out: list[Question] = []
    for index, raw in enumerate(raw_questions):
        where = f"puzzle {puzzle_id}, question {index}"
        if not isinstance(raw, dict):
            raise InputError(path, line, f"{where}: each question must be an object, and this one is {describe(raw)}")
        question = _require_str(raw, "question", where, path, line)
        options = _require_list(raw, "options", where, path, line)
        if len(options) > len(LETTERS):
            raise InputError(path, line, f"{where}: {len(options)} options, more than the {len(LETTERS)} letters A-Z")
        option_letters = letters_for(len(options))
        letters = "".join(option_letters)
        for letter, option in zip(option_letters, options):
            if not isinstance(option, str):
                raise InputError(path, line, f"{where}: option {letter} must be a string, and this one is {describe(option)}")
        answer = raw.get("answer")
        if answer is None:
            if source.split == "train":
                raise InputError(path, line, f"{where}: training data needs an 'answer'")
        elif not isinstance(answer, str):
            raise InputError(path, line, f"{where}: 'answer' must be a letter string (one of {letters}), "
                                         f"and this one is {describe(answer)}")
        elif answer not in option_letters:
            raise InputError(path, line, f"{where}: answer {answer!r} is not one of its option letters {letters}")
        out.append(
            Question(
                qid=f"{puzzle_id}#{index}",
                puzzle_id=puzzle_id,
                question_index=index,
                source=source.name,
                problem=problem,
                question=question,
                options=list(options),
                answer=answer if source.split == "train" else None,
            )
        )
    return out


def read_sources(sources: Sequence[Source]) -> dict[Split, list[Question]]:
    """Read and validate every source; questions grouped by split, in source order.

    Puzzle ids must be unique across all sources (the question id is built from them).
    """
    by_split: dict[Split, list[Question]] = {"train": [], "test": []}
    first_seen: dict[str, str] = {}
    for source in sources:
        n_puzzles = 0
        n_questions = 0
        for line, obj in iter_jsonl(source.path):
            questions = parse_puzzle(obj, source, line)
            puzzle_id = questions[0]["puzzle_id"]
            here = f"{source.path}:{line}"
            if puzzle_id in first_seen:
                raise InputError(source.path, line, f"duplicate puzzle id {puzzle_id!r}, first seen at {first_seen[puzzle_id]}")
            first_seen[puzzle_id] = here
            by_split[source.split].extend(questions)
            n_puzzles += 1
            n_questions += len(questions)
        log.info("source %s (%s, %s): %d puzzles, %d questions", source.name, source.split, source.path, n_puzzles, n_questions)
    return by_split


def flatten(sources: Sequence[Source], train_out: str | os.PathLike[str], test_out: str | os.PathLike[str]) -> dict[Split, int]:
    """Flatten all sources into the train and test question files; return question counts.

    Everything is validated before anything is written, so a bad line leaves no output.
    """
    by_split = read_sources(sources)
    if not by_split["train"]:
        raise ValueError("no training questions: configure at least one source with split 'train'")
    counts: dict[Split, int] = {
        "train": atomic_write_jsonl(train_out, by_split["train"]),
        "test": atomic_write_jsonl(test_out, by_split["test"]),
    }
    log.info("wrote %d training questions to %s and %d test questions to %s", counts["train"], train_out, counts["test"], test_out)
    return counts


def read_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a flattened question file written by :func:`flatten`."""
    questions: list[Question] = []
    for _, obj in iter_jsonl(path):
        questions.append(Question(**obj))  # type: ignore[typeddict-item]
    return questions
