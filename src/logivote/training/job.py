"""The training rules' entry points: ``train_lora`` (one job of K adapters) and ``link_adapter``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.jsonl import atomic_directory, link_or_copy
from .loop import train_adapters
from .settings import TrainSettings


def job_adapters(job: int, n_subsets: int, per_job: int) -> list[int]:
    """The adapters training job ``job`` holds: ``per_job`` consecutive ones (the last job may hold fewer)."""
    return list(range(job * per_job, min(n_subsets, (job + 1) * per_job)))


def train_lora_job(
    *,
    base_dir: str,
    subset_paths: Sequence[str],
    job_dir: str,
    checkpoint_dir: str,
    section: dict[str, Any],
    adapters: Sequence[int],
    threads: int,
    gpus: int,
) -> None:
    """The ``train_lora`` rule: hold ``gpus`` GPUs of our own, then train this job's adapters into ``job_dir/{k}``."""
    from ..gpus import gpu_slots

    settings = replace(TrainSettings.from_config(section), threads=threads, gpus=gpus)
    with atomic_directory(job_dir) as tmp, gpu_slots(gpus):
        train_adapters(base_dir, dict(zip(adapters, subset_paths)), {k: tmp / str(k) for k in adapters}, checkpoint_dir, settings)


def link_adapter(job_adapter_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """The ``link_adapter`` rule: ``results/adapters/{k}`` as hard links to the files its training job wrote (a copy where links fail)."""
    source = Path(job_adapter_dir)
    with atomic_directory(out_dir) as tmp:
        for path in source.iterdir():
            link_or_copy(path, tmp / path.name)
