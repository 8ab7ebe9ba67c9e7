from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_snakemake


def test_dry_run_shows_flatten_and_21_subsets(workflow_copy: Path) -> None:
    result = run_snakemake(workflow_copy, "-n")
    assert result.returncode == 0, result.stderr
    counts = dict(line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["flatten"], ["subset"]) and len(line.split()) == 2)
    assert counts == {"flatten": "1", "subset": "21"}


@pytest.mark.parametrize(
    "override, words",
    [
        ("bagging: {n_subsets: 21, fraktion: 0.8, base_seed: 1}\n", "fraktion"),
        ("bagging: {n_subsets: many, fraction: 0.8, base_seed: 1}\n", "n_subsets"),
        ("sourcez: []\n", "sourcez"),
    ],
)
def test_schema_stops_a_bad_config_naming_the_key(workflow_copy: Path, override: str, words: str) -> None:
    (workflow_copy / "bad.yaml").write_text(override)
    result = run_snakemake(workflow_copy, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert words in output
    assert "error validating config file" in output.lower()


def test_lint_is_clean(workflow_copy: Path) -> None:
    result = run_snakemake(workflow_copy, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
