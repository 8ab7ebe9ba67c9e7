"""A real full disk under Snakemake (issue 44 point 2): ``results/`` on a tmpfs too small for ``flatten``'s output.

Needs root and a kernel that lets it mount a tmpfs (skipped otherwise, saying so); the atomic writers' own
disk-full handling is tested without a mount in tests/data/test_flatten.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..conftest import run_snakemake

OUTPUTS = ("results/data/train.jsonl", "results/data/test.jsonl")  # flatten's: about 270 and 54 kB


@pytest.fixture
def small_results(workflow_copy: Path) -> Path:
    """``workflow_copy`` with a 128 kB tmpfs mounted on its ``results/``."""
    results = workflow_copy / "results"
    results.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(results)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield workflow_copy
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)


def test_a_full_disk_fails_the_rule_saying_so_leaves_nothing_done_and_the_rerun_completes(small_results: Path) -> None:
    workdir = small_results
    result = run_snakemake(workdir, *OUTPUTS)
    assert result.returncode != 0
    log = (workdir / "logs/flatten.log").read_text()
    assert "results/data/train.jsonl: the disk is full (no space left on the device holding" in log, log[-2000:]
    assert "Nothing was left under that name: free some space and run again" in log
    left = sorted(p.name for p in (workdir / "results").rglob("*") if p.is_file())
    assert left == [], f"a failed write left files behind: {left}"

    subprocess.run(["umount", "-l", str(workdir / "results")], check=True)  # space is back
    rerun = run_snakemake(workdir, *OUTPUTS)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert all((workdir / o).stat().st_size > 0 for o in OUTPUTS)
