from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A copy of the tracked workflow (no results/) in a temporary folder."""
    dest = tmp_path / "clone"
    for name in ("workflow", "config", "resources", "envs"):
        shutil.copytree(REPO / name, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir, capture_output=True, text=True, timeout=600,
    )
