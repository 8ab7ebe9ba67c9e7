"""Crash safety of a training job: checkpoints, their fingerprint, and resuming from the newest complete one.

A checkpoint per job goes to ``checkpoint_dir/step-N`` every ``save_steps`` steps (LoRA weights, optimizer
state, losses, RNG states), written whole or not at all (:func:`logivote.data.jsonl.atomic_directory`); the
newest two are kept. A rerun resumes from the newest complete one provided its fingerprint (settings that
change the adapters, the subsets' bytes, the base) matches; a folder of another fingerprint is wiped, with a
log line. On CPU a resumed job ends with the same adapters as an uninterrupted one (``tests/training/test_train.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.jsonl import atomic_directory, sha256_file
from .settings import TrainSettings

log = logging.getLogger(__name__)


def fingerprint(settings: TrainSettings, subset_paths: Mapping[int, str | os.PathLike[str]], base_dir: str | os.PathLike[str]) -> str:
    """What a checkpoint must match to be resumed (threads/gpus/logging excluded: they do not change the math)."""
    knobs = {k: v for k, v in asdict(settings).items()
             if k not in ("threads", "gpus", "logging_steps", "adapters_per_job", "cuda_graphs")}
    base_config = Path(base_dir) / "config.json"
    payload = {
        "settings": knobs,
        "subsets": {str(k): sha256_file(path) for k, path in sorted(subset_paths.items())},
        "base": sha256_file(base_config) if base_config.exists() else str(base_dir),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def prepare_checkpoints(checkpoint_dir: Path, print_: str) -> Path | None:
    """Wipe a checkpoint folder of another fingerprint; return the newest complete checkpoint to resume, if any."""
    stamp = checkpoint_dir / "fingerprint.txt"
    if checkpoint_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != print_):
        log.warning("checkpoints in %s are from other settings or data: starting over", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(print_ + "\n")
    for leftover in checkpoint_dir.glob(".step-*"):  # a save cut off by a kill (atomic_directory's temporary folder)
        shutil.rmtree(leftover, ignore_errors=True)
    done = sorted((p for p in checkpoint_dir.glob("step-*") if (p / "state.pt").exists()), key=lambda p: int(p.name[5:]))
    return done[-1] if done else None


def save_checkpoint(checkpoint_dir: Path, step: int, lora: Any, optimizer: Any, losses: Sequence[list[float]]) -> None:
    import torch

    state = {
        "step": step,
        "lora": [lora.state(i) for i in range(lora.k)],
        "optimizer": optimizer.state_dict(),
        "losses": [list(x) for x in losses],
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    with atomic_directory(checkpoint_dir / f"step-{step}") as tmp:
        torch.save(state, tmp / "state.pt")
    for old in sorted(checkpoint_dir.glob("step-*"), key=lambda p: int(p.name[5:]))[:-2]:  # keep the newest two
        shutil.rmtree(old, ignore_errors=True)


def resume(checkpoint: Path, lora: Any, optimizer: Any) -> tuple[int, list[list[float]]]:
    """Load ``checkpoint`` into ``lora``, ``optimizer`` and the RNGs; the step it was taken after and the losses until then."""
    import torch

    state = torch.load(checkpoint / "state.pt", weights_only=False)
    for i in range(lora.k):
        lora.load_state(i, state["lora"][i])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    log.info("resuming from %s (step %d)", checkpoint, state["step"])
    return state["step"], state["losses"]
