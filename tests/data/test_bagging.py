from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from logivote.data.bagging import draw_subset, read_oob, subset_size, write_subset
from logivote.data.contracts import Question
from logivote.data.flatten import read_questions

from ..conftest import run_snakemake


def questions(n: int) -> list[Question]:
    return [
        Question(qid=f"p{i // 3}#{i % 3}", puzzle_id=f"p{i // 3}", question_index=i % 3, source="s",
                 problem="P", question="Q", options=["x", "y"], answer="A")
        for i in range(n)
    ]


def test_subset_keeps_fraction_and_oob_is_the_complement() -> None:
    qs = questions(101)
    keep, oob = draw_subset(qs, seed=7, fraction=0.8)
    assert len(keep) == 80 == subset_size(101, 0.8)
    kept = [q["qid"] for q in keep]
    assert len(set(kept)) == 80
    assert sorted(kept + oob) == sorted(q["qid"] for q in qs)
    assert oob == [q["qid"] for q in qs if q["qid"] not in set(kept)]  # input order
    assert kept != [q["qid"] for q in qs][:80]  # shuffled


def test_seed_decides_the_subset_and_input_order_does_not() -> None:
    qs = questions(60)
    a, _ = draw_subset(qs, seed=1, fraction=0.5)
    b, _ = draw_subset(list(reversed(qs)), seed=1, fraction=0.5)
    c, _ = draw_subset(qs, seed=2, fraction=0.5)
    assert a == b
    assert a != c


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        subset_size(10, fraction)


def test_duplicate_ids_refused() -> None:
    with pytest.raises(ValueError, match="not unique"):
        draw_subset(questions(3) * 2, seed=0, fraction=0.5)


def test_write_subset(tmp_path: Path) -> None:
    from logivote.data.jsonl import atomic_write_jsonl

    train = tmp_path / "train.jsonl"
    atomic_write_jsonl(train, questions(30))
    assert write_subset(train_path=train, k=3, base_seed=10, fraction=0.8, subset_out=tmp_path / "3.jsonl",
                        oob_out=tmp_path / "3.oob.txt") == (24, 6)
    keep, oob = draw_subset(questions(30), seed=13, fraction=0.8)
    assert read_questions(tmp_path / "3.jsonl") == keep
    assert read_oob(tmp_path / "3.oob.txt") == oob


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "results" / "subsets").iterdir())}


# sha256 of results/subsets/0.jsonl for the committed sample and config: the
# bagging must give these bytes on every machine, OS and Python version.
SUBSET0_SHA256 = "b9be5edd1577107f4665ec386ea05b207b2dae128fd1e4cce236ea1cfde0acf8"


def test_two_clones_give_byte_identical_subsets(tmp_path: Path, workflow_copy: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(workflow_copy, other)
    for root in (workflow_copy, other):
        # no dev split: the bags are drawn from every training question, as the pinned hash was
        (root / "three.yaml").write_text("bagging: {n_subsets: 3, fraction: 0.8, base_seed: 2024}\nevaluation: {dev_fraction: 0.0}\n")
        targets = [f"results/subsets/{k}.{ext}" for k in range(3) for ext in ("jsonl", "oob.txt")]
        result = run_snakemake(root, *targets, "--configfile", "three.yaml")
        assert result.returncode == 0, result.stderr
    first, second = digests(workflow_copy), digests(other)
    assert sorted(first) == ["0.jsonl", "0.oob.txt", "1.jsonl", "1.oob.txt", "2.jsonl", "2.oob.txt"]
    assert first == second
    assert first["0.jsonl"] == SUBSET0_SHA256
    assert len(set(first.values())) == 6


def test_dev_split_holds_out_whole_puzzles_reproducibly(tmp_path: Path) -> None:
    from logivote.data.bagging import split_dev, write_dev_split

    questions = [Question(qid=f"p{p}#{i}", puzzle_id=f"p{p}", question_index=i, source="t", problem=f"P{p}",
                          question="Q", options=["x", "y"], answer="A") for p in range(20) for i in range(3)]
    pool, dev = split_dev(questions, 7, 0.25)
    assert len({q["puzzle_id"] for q in dev}) == 5 and len(dev) == 15
    assert not {q["puzzle_id"] for q in dev} & {q["puzzle_id"] for q in pool}  # no puzzle on both sides
    assert [q["qid"] for q in pool + dev] != [q["qid"] for q in questions]  # a real selection...
    assert sorted(q["qid"] for q in pool + dev) == sorted(q["qid"] for q in questions)  # ...of everything, once
    assert split_dev(questions, 7, 0.25) == (pool, dev)
    assert split_dev(questions, 8, 0.25)[1] != dev
    assert split_dev(questions, 7, 0.0) == (questions, [])
    with pytest.raises(ValueError, match="dev_fraction"):
        split_dev(questions, 7, 1.0)
    from logivote.data.jsonl import atomic_write_jsonl

    atomic_write_jsonl(tmp_path / "train.jsonl", questions)
    write_dev_split(train_path=tmp_path / "train.jsonl", seed=7, fraction=0.0, pool_out=tmp_path / "pool.jsonl", dev_out=tmp_path / "dev.jsonl")
    assert (tmp_path / "pool.jsonl").read_bytes() == (tmp_path / "train.jsonl").read_bytes()  # no dev: the recipe's bags
    assert (tmp_path / "dev.jsonl").read_bytes() == b""


def test_dev_split_is_byte_identical_across_clones_and_in_no_bag(tmp_path: Path, workflow_copy: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(workflow_copy, other)
    targets = ["results/data/dev.jsonl"] + [f"results/subsets/{k}.jsonl" for k in range(21)]
    for root in (workflow_copy, other):
        result = run_snakemake(root, *targets)  # the embedded default: half of the puzzles held out
        assert result.returncode == 0, result.stderr
    dev = [(root / "results/data/dev.jsonl").read_bytes() for root in (workflow_copy, other)]
    assert dev[0] == dev[1] and dev[0]
    dev_puzzles = {q["puzzle_id"] for q in read_questions(workflow_copy / "results/data/dev.jsonl")}
    assert len(dev_puzzles) == 75  # half of the sample's 150 puzzles
    for k in range(21):
        assert not dev_puzzles & {q["puzzle_id"] for q in read_questions(workflow_copy / f"results/subsets/{k}.jsonl")}, k
