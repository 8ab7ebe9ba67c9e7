"""The vLLM server's entry point: ``python -m logivote.serving.vllm_entry ARGS...`` runs vLLM's OpenAI-compatible
server (``vllm.entrypoints.openai.api_server``) with ARGS, as ``python -m`` of that module would.

One difference, and only where the server's environment asks for it: vLLM's CPU platform sets
``VLLM_WORKER_MULTIPROC_METHOD=spawn`` while it checks the config (``CpuPlatform.check_and_update_config``),
overriding what the environment said. A spawned process is a fresh Python that imports torch and vLLM again:
the server starts its engine and the engine its model worker, so a server on a 2-core CPU spent about 20 of
its 31–34 s of start-up importing vLLM a second and a third time, one process after the other
(docs/hardware.md). With ``VLLM_WORKER_MULTIPROC_METHOD=fork`` in the server's environment (``serve.env``) this
entry point restores ``fork`` after that check, and the engine and the worker start as copies of the process
that has imported everything (healthy after 13–15 s there).

What ``spawn`` did that a copy needs done again: vLLM binds the model worker's OpenMP threads to their cores
(``VLLM_CPU_OMP_THREADS_BIND``, one core of 2 here: the other is kept for the scheduler and the HTTP server) by
setting ``OMP_PLACES``, ``OMP_PROC_BIND`` and ``OMP_NUM_THREADS`` (or Intel's and GNU's own variables) just before
it starts the worker. A fresh process's OpenMP runtime reads them when it loads; a copy's runtime was loaded, and
read its environment, in the server's process, so a forked worker ran unbound, on both cores, and asked slower
(44–49 s against 39–49 s for the default's first round, docs/hardware.md). :func:`bind_like_spawn`, run in each
forked child, gives the child what those variables say: its CPU affinity (which the OpenMP threads it starts
inherit) and torch's thread count. Each thread may then move among the worker's cores rather than being pinned to
one of them; with the one core here the two are the same.

The server forks before it serves anything, with no Python thread but its main one (ZMQ's I/O threads are not
carried into a child; vLLM makes new sockets there, as it does for its default, ``fork``, off the CPU). On a GPU
vLLM forces ``spawn`` itself once CUDA is up; this entry point only touches the CPU platform, and only when the
environment asks for ``fork``.

With ``fork`` kept, and ``LOGIVOTE_CPU_LORA_OPS=grouped`` in the environment, it also installs
:mod:`logivote.serving.cpu_lora`'s LoRA ops before vLLM starts: the model worker, a copy of this process, runs them.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
from collections.abc import Mapping

from . import cpu_lora

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
METHOD_VAR = "VLLM_WORKER_MULTIPROC_METHOD"
BOUND_MESSAGE = "logivote.serving.vllm_entry: forked child bound as its OpenMP variables say,"


def omp_cpus(environ: Mapping[str, str]) -> list[int]:
    """The CPUs vLLM's OpenMP variables give a worker (``[]``: none set): ``OMP_PLACES`` ``{0,1}`` (vLLM's
    default), ``GOMP_CPU_AFFINITY`` ``0 1`` (libgomp preloaded) or ``KMP_AFFINITY`` ``...,proclist=[0,1]``
    (Intel's OpenMP preloaded)."""
    if environ.get("OMP_PLACES"):
        text = environ["OMP_PLACES"]
    elif environ.get("GOMP_CPU_AFFINITY"):
        text = environ["GOMP_CPU_AFFINITY"]
    else:
        match = re.search(r"proclist=\[([^\]]*)\]", environ.get("KMP_AFFINITY", ""))
        text = match.group(1) if match else ""
    return [int(cpu) for cpu in re.findall(r"\d+", text)]


def bind_like_spawn() -> None:
    """In a forked child: the CPU affinity and thread count that vLLM's OpenMP variables ask for (the module's
    docstring), as a freshly started OpenMP runtime would have taken them; nothing where none is set."""
    cpus = omp_cpus(os.environ)
    if not cpus:
        return
    os.sched_setaffinity(0, cpus)
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS") or len(cpus))
    torch.set_num_threads(threads)
    print(f"{BOUND_MESSAGE} pid {os.getpid()}: CPUs {cpus}, {threads} thread(s)", file=sys.stderr, flush=True)


def keep_fork_on_cpu() -> None:
    """Make vLLM's CPU platform keep ``VLLM_WORKER_MULTIPROC_METHOD=fork`` after its config check, and bind each
    forked child as its OpenMP variables say (:func:`bind_like_spawn`)."""
    from vllm.platforms import cpu

    os.register_at_fork(after_in_child=bind_like_spawn)

    check = cpu.CpuPlatform.check_and_update_config.__func__  # type: ignore[attr-defined]

    def check_and_keep_fork(cls: type, vllm_config: object) -> None:
        check(cls, vllm_config)
        os.environ[METHOD_VAR] = "fork"

    cpu.CpuPlatform.check_and_update_config = classmethod(check_and_keep_fork)  # type: ignore[method-assign,assignment]


def main(argv: list[str]) -> None:
    if os.environ.get(METHOD_VAR) == "fork":
        keep_fork_on_cpu()
        if os.environ.get(cpu_lora.OPS_VAR) == "grouped":
            cpu_lora.install()
    elif os.environ.get(cpu_lora.OPS_VAR) == "grouped":
        print(f"{cpu_lora.OPS_VAR}=grouped is for vLLM's CPU platform with {METHOD_VAR}=fork; here vLLM's own LoRA "
              "ops are used", file=sys.stderr, flush=True)
    sys.argv = [VLLM_MODULE, *argv]
    runpy.run_module(VLLM_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
