"""Issue 44 point 5: a training job's checkpoint folder is resumed only under the same fingerprint (settings that change
the math, the subsets' bytes, the base's config); anything else wipes it, and the log says so."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")

from logivote.training.checkpoints import fingerprint, prepare_checkpoints  # noqa: E402
from logivote.training.settings import TrainSettings  # noqa: E402


def _inputs(tmp_path: Path) -> tuple[dict[int, Path], Path]:
    subset = tmp_path / "0.jsonl"
    subset.write_text('{"qid": "p#0"}\n')
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"hidden_size": 128}\n')
    return {0: subset}, base


def test_fingerprint_follows_what_changes_the_adapters_and_nothing_else(tmp_path: Path) -> None:
    subsets, base = _inputs(tmp_path)
    settings = TrainSettings()
    first = fingerprint(settings, subsets, base)
    assert fingerprint(replace(settings, threads=8, gpus=1, logging_steps=3, adapters_per_job=7, cuda_graphs=True), subsets, base) == first
    assert fingerprint(replace(settings, learning_rate=2e-4), subsets, base) != first
    assert fingerprint(replace(settings, frozen_gemm="fp8"), subsets, base) != first
    subsets[0].write_text('{"qid": "p#1"}\n')
    assert fingerprint(settings, subsets, base) != first


def test_a_checkpoint_of_other_settings_is_wiped_and_the_log_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = tmp_path / "checkpoints"
    assert prepare_checkpoints(ckpt, "A") is None  # nothing yet: the folder is stamped
    for step in (10, 20):
        (ckpt / f"step-{step}").mkdir()
        (ckpt / f"step-{step}" / "state.pt").write_bytes(b"x")
    (ckpt / "step-30").mkdir()  # no state.pt: incomplete, never resumed
    (ckpt / ".step-40.tmp").mkdir()  # a save cut off by a kill
    with caplog.at_level(logging.WARNING):
        assert prepare_checkpoints(ckpt, "A") == ckpt / "step-20"
    assert not (ckpt / ".step-40.tmp").exists() and not caplog.records
    with caplog.at_level(logging.WARNING):
        assert prepare_checkpoints(ckpt, "B") is None
    assert "from other settings or data: starting over" in caplog.text
    assert sorted(p.name for p in ckpt.iterdir()) == ["fingerprint.txt"]
    assert (ckpt / "fingerprint.txt").read_text().strip() == "B"
