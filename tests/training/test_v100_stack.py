"""The V100 training stack, run: the training, GPTQ and learning tests pass under the `gpu-v100-train` extra.

A V100 needs torch 2.8.0 (docs/gpus.md), and at torch 2.8.0 gptqmodel 7.6.0 does not even import
(it needs torchao >= 0.18, which imports a torch 2.9 name), so the extra pins gptqmodel 7.5.0 with torchao
0.16.0. This test builds that second environment (a venv with the extra, installed by ``setup.sh`` from the package
index: PyPI's torch 2.8.0, whose CPU code paths are what these tests use) and runs the tests of the training step, the GPTQ-Int4
path and the learning guard in it, as CI's second environment. It fails if any of them fails or none ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ..conftest import REPO

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow" leaves it out (README: Tests)

TESTS = ["tests/training/test_train.py", "tests/base/test_gptq.py", "tests/training/test_learning.py"]


def pinned(extra: str, package: str) -> str:
    specs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    return next(s.split("==")[1] for s in specs if s.startswith(f"{package}=="))


def test_training_gptq_and_learning_tests_pass_under_the_v100_extra(tmp_path: Path) -> None:
    venv = tmp_path / "v100"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "BUILD_CUDA_EXT": "0"}  # gptqmodel's sdist: no CUDA kernels to build here
    env.pop("PYTHONPATH", None)
    # the README's set-up command, with the V100 extra (and pytest's) into this venv: uv, as the set-up installs
    install = subprocess.run(["bash", str(REPO / "setup.sh")], env={**env, "PYTHON": python, "LOGIVOTE_EXTRAS": "gpu-v100-train,test"},
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    versions = subprocess.run([python, "-c", "import torch, gptqmodel, torchao, logivote; "
                               "print(torch.__version__.split('+')[0], gptqmodel.__version__, torchao.__version__, logivote.__file__)"],
                              env=env, capture_output=True, text=True)
    assert versions.returncode == 0, versions.stderr[-3000:]
    torch_v, gptq_v, ao_v, where = versions.stdout.split()[-4:]
    assert (torch_v, gptq_v, ao_v) == (pinned("gpu-v100-train", "torch"), pinned("gpu-v100-train", "gptqmodel"),
                                       pinned("gpu-v100-train", "torchao"))
    assert Path(where) == REPO / "src/logivote/__init__.py"
    # the grouped LoRA GEMMs need torch.nn.functional.grouped_mm (torch 2.10+, used on Hopper GPUs): torch 2.8 runs
    # the one-hot path, which the other tests cover; the cases that train on a GPU ("cuda" in their ids) need one
    run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "not grouped and not cuda", *TESTS], cwd=REPO, env=env,
                         capture_output=True, text=True)
    print(run.stdout[-4000:])
    # exit code 5 (no tests collected) fails too; a skipped test means a library was missing there
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-3000:]
