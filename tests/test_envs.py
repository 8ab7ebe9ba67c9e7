"""The conda environments in envs/ and the pip extras in pyproject.toml must pin the same packages."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from .conftest import REPO

PAIRS = {"cpu": "envs/cpu.yaml", "gpu-train": "envs/gpu-train.yaml", "gpu-serve": "envs/gpu-serve.yaml",
         "slurm": "envs/slurm.yaml"}


def pip_requirements(env_file: str) -> set[str]:
    env = yaml.safe_load((REPO / env_file).read_text())
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{env_file}: expected one pip section"
    return {line.replace(" ", "") for line in pips[0] if not line.startswith("--")}


@pytest.mark.parametrize("extra", sorted(PAIRS))
def test_env_file_matches_pip_extra(extra: str) -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {r.replace(" ", "") for r in extras[extra]} == pip_requirements(PAIRS[extra])


def test_every_env_file_is_paired_or_is_the_data_env() -> None:
    files = {f"envs/{p.name}" for p in (REPO / "envs").glob("*.yaml")}
    assert files == set(PAIRS.values()) | {"envs/data.yaml"}
