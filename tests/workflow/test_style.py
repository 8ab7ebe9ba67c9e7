"""Style, checked as CI checks everything else: ruff over the Python (settings in pyproject.toml: line length 160,
pycodestyle, pyflakes, isort, pyupgrade, bugbear) and snakefmt over the Snakefile and rule files. Both are pinned in
the ``test`` extra. Each check is run once on a copy with a fault it must find, so a check that finds nothing cannot pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=cwd, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extra: pip install -e '.[test]'")
def test_ruff_finds_nothing(tmp_path: Path) -> None:
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "bad.py").write_text("import os\n")  # an unused import
    assert run("ruff", "check", "--no-cache", ".", cwd=tmp_path).returncode == 1


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt is in the test extra: pip install -e '.[test]'")
def test_snakefmt_would_change_no_rule_file(tmp_path: Path) -> None:
    result = run("snakefmt", "--check", "workflow")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    shutil.copy(REPO / "workflow" / "rules" / "data.smk", tmp_path / "data.smk")
    with open(tmp_path / "data.smk", "a") as handle:
        handle.write("rule  x :\n    shell: 'true'\n")  # badly spaced
    assert run("snakefmt", "--check", str(tmp_path)).returncode == 1
