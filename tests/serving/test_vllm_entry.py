"""The server's entry point: a forked vLLM child gets the binding its OpenMP variables ask for (the real server's
fork is checked in test_e2e, whose server log must show its worker bound)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from logivote.serving.vllm_entry import BOUND_MESSAGE, omp_cpus

CHILD = """
import json, os, sys
from logivote.serving.vllm_entry import bind_like_spawn
import torch
os.register_at_fork(after_in_child=bind_like_spawn)
for name, value in json.loads(sys.argv[1]).items():
    os.environ[name] = value
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, json.dumps([sorted(os.sched_getaffinity(0)), torch.get_num_threads()]).encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 1000).decode())
"""


@pytest.mark.parametrize(("environ", "cpus"), [
    ({"OMP_PLACES": "{0,1,2}", "OMP_PROC_BIND": "true"}, [0, 1, 2]),  # vLLM's default
    ({"GOMP_CPU_AFFINITY": "3 4"}, [3, 4]),  # libgomp preloaded
    ({"KMP_AFFINITY": "granularity=fine,explicit,proclist=[5,6]", "KMP_BLOCKTIME": "5"}, [5, 6]),  # Intel's OpenMP
    ({"OMP_NUM_THREADS": "2"}, []),  # no places: nothing to bind
])
def test_the_cpus_come_from_whichever_openmp_variables_vllm_set(environ: dict[str, str], cpus: list[int]) -> None:
    assert omp_cpus(environ) == cpus


def forked_child(environ: dict[str, str]) -> tuple[list[int], int, str]:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(environ)], capture_output=True, text=True, check=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))})
    affinity, threads = json.loads(result.stdout)
    return affinity, threads, result.stderr


def test_a_forked_child_takes_the_cpus_and_threads_its_variables_give_it() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    one = allowed[-1]
    affinity, threads, stderr = forked_child({"OMP_PLACES": f"{{{one}}}", "OMP_PROC_BIND": "true", "OMP_NUM_THREADS": "1"})
    assert (affinity, threads) == ([one], 1)
    assert f"{BOUND_MESSAGE} pid" in stderr and f"CPUs [{one}], 1 thread(s)" in stderr


def test_a_forked_child_without_those_variables_is_left_as_it_was() -> None:
    affinity, _, stderr = forked_child({})
    assert affinity == sorted(os.sched_getaffinity(0))
    assert BOUND_MESSAGE not in stderr
