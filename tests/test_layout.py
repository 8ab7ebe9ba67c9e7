"""Repository hygiene: rule scripts alone in workflow/scripts/, no large binaries tracked."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO

MAX_TRACKED_BYTES = 1024 * 1024


def test_workflow_scripts_holds_only_rule_scripts() -> None:
    used = set()
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./scripts/([^"]+)"', rules.read_text()))
    present = {p.name for p in (REPO / "workflow" / "scripts").iterdir() if p.name != "__pycache__"}
    assert present == used, f"not a rule script: {sorted(present - used)}; missing: {sorted(used - present)}"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_no_tracked_file_over_one_megabyte() -> None:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    big = [n for n in names if n and (REPO / n).is_file() and (REPO / n).stat().st_size > MAX_TRACKED_BYTES]
    assert not big, f"tracked files over 1 MB (wheels, models, logs belong outside git): {big}"
