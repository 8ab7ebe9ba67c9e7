from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from logivote.bagging import draw_subset, read_oob, subset_size, write_subset
from logivote.contracts import Question
from logivote.flatten import read_questions

from .conftest import run_snakemake


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
    from logivote.jsonl import atomic_write_jsonl

    train = tmp_path / "train.jsonl"
    atomic_write_jsonl(train, questions(30))
    assert write_subset(train, 3, 10, 0.8, tmp_path / "3.jsonl", tmp_path / "3.oob.txt") == (24, 6)
    keep, oob = draw_subset(questions(30), seed=13, fraction=0.8)
    assert read_questions(tmp_path / "3.jsonl") == keep
    assert read_oob(tmp_path / "3.oob.txt") == oob


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "results" / "subsets").iterdir())}


# sha256 of results/subsets/0.jsonl for the committed sample and config: the
# bagging must give these bytes on every machine, OS and Python version.
SUBSET0_SHA256 = "62f8ecdd7137febb3943073e39ad00f37a955275d2b943a2a9eb2f1024421f4f"


def test_two_clones_give_byte_identical_subsets(tmp_path: Path, workflow_copy: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(workflow_copy, other)
    for root in (workflow_copy, other):
        (root / "three.yaml").write_text("bagging: {n_subsets: 3, fraction: 0.8, base_seed: 2024}\n")
        targets = [f"results/subsets/{k}.{ext}" for k in range(3) for ext in ("jsonl", "oob.txt")]
        result = run_snakemake(root, *targets, "--configfile", "three.yaml")
        assert result.returncode == 0, result.stderr
    first, second = digests(workflow_copy), digests(other)
    assert sorted(first) == ["0.jsonl", "0.oob.txt", "1.jsonl", "1.oob.txt", "2.jsonl", "2.oob.txt"]
    assert first == second
    assert first["0.jsonl"] == SUBSET0_SHA256
    assert len(set(first.values())) == 6
