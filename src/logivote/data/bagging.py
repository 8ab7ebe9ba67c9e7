"""Stage 1, data (recipe step 2): bagging — seeded subsets of the training questions, one per adapter.

Subset ``k`` orders the questions by ``sha256(f"{base_seed + k}:{qid}")`` (a
shuffle that depends only on the seed and the ids: the same on every machine,
OS and Python version) and keeps the first ``floor(fraction * n)`` of them
(at least one). The questions left out are that subset's out-of-bag ids.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence

from .contracts import Question
from .flatten import read_questions
from .jsonl import atomic_write_jsonl, atomic_write_text

log = logging.getLogger(__name__)


def shuffle_key(seed: int, qid: str) -> str:
    return hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()


def subset_size(n: int, fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * n + 1e-9)) if n else 0


def draw_subset(questions: Sequence[Question], seed: int, fraction: float) -> tuple[list[Question], list[str]]:
    """Return (in-bag questions in shuffled order, out-of-bag ids in input order)."""
    ids = [q["qid"] for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError("question ids are not unique")
    order = sorted(questions, key=lambda q: shuffle_key(seed, q["qid"]))
    keep = order[: subset_size(len(questions), fraction)]
    kept = {q["qid"] for q in keep}
    oob = [qid for qid in ids if qid not in kept]
    return keep, oob


def write_subset(
    *,
    train_path: str | os.PathLike[str],
    k: int,
    base_seed: int,
    fraction: float,
    subset_out: str | os.PathLike[str],
    oob_out: str | os.PathLike[str],
) -> tuple[int, int]:
    """Write bag ``k`` (seed ``base_seed + k``) and its out-of-bag ids; return both sizes."""
    questions = read_questions(train_path)
    keep, oob = draw_subset(questions, base_seed + k, fraction)
    atomic_write_text(oob_out, "".join(qid + "\n" for qid in oob))
    atomic_write_jsonl(subset_out, keep)
    log.info("subset %d (seed %d): %d of %d questions in bag, %d out of bag", k, base_seed + k, len(keep), len(questions), len(oob))
    return len(keep), len(oob)


def read_oob(path: str | os.PathLike[str]) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def split_dev(questions: Sequence[Question], seed: int, fraction: float) -> tuple[list[Question], list[Question]]:
    """Hold out ``round(fraction × puzzles)`` whole puzzles as a dev set: (bagging pool, dev), both in input order.

    Whole puzzles, because a puzzle's questions share its text: splitting by question would leak.
    Puzzles are ordered by ``sha256(f"dev:{seed}:{puzzle_id}")``, so the split is byte-identical on any machine.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"evaluation.dev_fraction must be in [0, 1), got {fraction}")
    puzzles = list(dict.fromkeys(q["puzzle_id"] for q in questions))
    held = set(sorted(puzzles, key=lambda p: shuffle_key(seed, f"dev:{p}"))[: round(fraction * len(puzzles))])
    return [q for q in questions if q["puzzle_id"] not in held], [q for q in questions if q["puzzle_id"] in held]


def write_dev_split(*, train_path: str | os.PathLike[str], seed: int, fraction: float,
                    pool_out: str | os.PathLike[str], dev_out: str | os.PathLike[str]) -> tuple[int, int]:
    """Rule ``dev_split``: ``results/data/pool.jsonl`` (what the bags draw from) and ``results/data/dev.jsonl``."""
    pool, dev = split_dev(read_questions(train_path), seed, fraction)
    atomic_write_jsonl(dev_out, dev)
    atomic_write_jsonl(pool_out, pool)
    log.info("dev split (seed %d, fraction %g): %d dev questions from %d puzzles; %d questions left to bag",
             seed, fraction, len(dev), len({q["puzzle_id"] for q in dev}), len(pool))
    return len(pool), len(dev)
