from __future__ import annotations

import re
from pathlib import Path

from logivote.data.contracts import LETTERS
from logivote.data.flatten import Source, read_sources
from logivote.data.jsonl import iter_jsonl
from logivote.data.sample_data import write_sample

from ..conftest import REPO

DATA = REPO / "resources" / "data"


def test_committed_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    write_sample(tmp_path)
    for name in ("sample_train.jsonl", "sample_test.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"regenerate {name}: python -m logivote.data.sample_data"


def test_sample_is_big_enough_and_valid() -> None:
    by_split = read_sources([
        Source("train", str(DATA / "sample_train.jsonl"), "train"),
        Source("test", str(DATA / "sample_test.jsonl"), "test"),
    ])
    assert len({q["puzzle_id"] for q in by_split["train"]}) >= 30
    assert len(by_split["train"]) >= 90
    assert len(by_split["test"]) >= 30 and all(q["answer"] is None for q in by_split["test"])
    assert {len(q["options"]) for q in by_split["train"]} >= {2, 3, 4}
    assert all(re.search(r"[\u4e00-\u9fff]", q["problem"]) for q in by_split["train"])


def test_ordering_answers_follow_from_the_facts() -> None:
    """An independent check of one puzzle kind: rebuild the order from the facts and compare."""
    checked = 0
    for _, puzzle in iter_jsonl(DATA / "sample_train.jsonl"):
        facts = re.findall(r"\d+\. (\S+?)比(\S+?)高。", puzzle["problem"])
        if not facts:
            continue
        taller = dict(facts)
        people = set(taller) | set(taller.values())
        top = (people - set(taller.values())).pop()
        order = [top]
        while order[-1] in taller:
            order.append(taller[order[-1]])
        for item in puzzle["questions"]:
            chosen = item["options"][LETTERS.index(item["answer"])]
            if "谁最高" in item["question"]:
                assert chosen == order[0]
            elif "谁最矮" in item["question"]:
                assert chosen == order[-1]
            else:
                a, b = re.search(r"\n(\S+?)比(\S+?)高吗", item["question"]).groups()
                assert chosen == ("是" if order.index(a) < order.index(b) else "否")
            checked += 1
    assert checked >= 20


def test_kind_of_reads_back_every_sample_puzzles_kind() -> None:
    from logivote.data.sample_data import KINDS, kind_of

    names = [kind.__name__.removesuffix("_puzzle") for kind in KINDS]
    for i, (_, puzzle) in enumerate(iter_jsonl(DATA / "sample_train.jsonl")):
        assert kind_of(puzzle["problem"]) == names[i % len(names)], puzzle["id"]
    assert kind_of("三个人比较身高。") is None
