"""Benchmark (not a test): GPTQ-Int4 dequantization at the 32B shape's linears, on a CUDA GPU.

:func:`logivote.training.gptq_dequant.dequantize` (one Triton pass) against what training used before (gptqmodel's
torch ``dequantize_weight`` followed by a cast, reproduced op for op), gptqmodel's own Triton dequant and
the full-depth anchor's ``torch.compile``d dequantization; checks our bits against the torch path, tries a
few tile shapes, and prints one JSON line per shape (milliseconds, and our best in GB/s of int4 read plus
bf16 written; the matmul of 4 096 tokens by the same weight for scale).

    python -m logivote.bench.dequant [--out gptq_dequant.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from logivote.training import gptq_dequant

SHAPES = [(5120, 27648), (27648, 5120), (5120, 5120), (5120, 1024)]  # gate/up, down, q/o, k/v
TILES = [(64, 128, 4), (64, 256, 4), (128, 128, 4), (128, 256, 8), (32, 256, 4), (64, 512, 8)]


class _Linear:
    """The attributes of a gptqmodel linear that the dequantizations read (4-bit, group 128, no act-order)."""

    def __init__(self, n_in: int, n_out: int, gen: torch.Generator) -> None:
        dev = "cuda"
        self.qweight = torch.randint(-2**31, 2**31 - 1, (n_in // 8, n_out), dtype=torch.int32, device=dev, generator=gen)
        self.qzeros = torch.randint(-2**31, 2**31 - 1, (n_in // 128, n_out // 8), dtype=torch.int32, device=dev, generator=gen)
        self.scales = (torch.rand(n_in // 128, n_out, device=dev, generator=gen) * 2e-3 - 1e-3).half()
        self.g_idx = (torch.arange(n_in, device=dev) // 128).int()
        self.bits, self.group_size, self.in_features, self.out_features = 4, 128, n_in, n_out


def _torch_path(m: _Linear, dtype: torch.dtype) -> torch.Tensor:
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=m.qweight.device)
    z = ((m.qzeros.unsqueeze(2).expand(-1, -1, 8) >> shifts.view(1, 1, 8)) & 0xF).to(torch.int8).reshape(m.qzeros.shape[0], -1)
    w = ((m.qweight.unsqueeze(1).expand(-1, 8, -1) >> shifts.view(1, 8, 1)) & 0xF).to(torch.int8).reshape(-1, m.out_features)
    g = m.g_idx.long()
    return (m.scales[g] * (w - z[:, :m.out_features][g])).to(dtype)


def emit(row: dict[str, Any], out: str | None) -> None:
    """Print ``row`` as one JSON line, and append it to ``out`` if given."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def timed(fn: Callable[[], Any], n: int = 20) -> float:
    """Milliseconds per call of ``fn`` on the GPU (one untimed call first)."""
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / n * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device="cuda")

    @torch.compile(dynamic=False)
    def anchor(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:  # the full-depth anchor's (zero fixed at 8)
        q = ((qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(-1, qweight.shape[1]).to(torch.bfloat16) - 8.0
        return q * scales.to(torch.bfloat16).repeat_interleave(128, dim=0)

    from gptqmodel.nn_modules.triton_utils.dequant import dequant as gptqmodel_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    defaults = gptq_dequant.BLOCK_IN, gptq_dequant.BLOCK_OUT, gptq_dequant.NUM_WARPS
    for n_in, n_out in SHAPES:
        m = _Linear(n_in, n_out, gen)
        want = _torch_path(m, torch.bfloat16)
        row: dict[str, Any] = {"shape": [n_in, n_out], "exact": bool(torch.equal(gptq_dequant.dequantize(m, torch.bfloat16), want)),
                               "torch_path_ms": timed(lambda: _torch_path(m, torch.bfloat16)),
                               "gptqmodel_triton_ms": timed(lambda: gptqmodel_triton(torch.bfloat16, m.qweight, m.scales, m.qzeros, m.g_idx, 4, 32, 15)),
                               "anchor_compiled_ms": timed(lambda: anchor(m.qweight, m.scales))}
        for bi, bo, warps in TILES:
            gptq_dequant.BLOCK_IN, gptq_dequant.BLOCK_OUT, gptq_dequant.NUM_WARPS = bi, bo, warps
            row[f"ours_{bi}x{bo}w{warps}_ms"] = timed(lambda: gptq_dequant.dequantize(m, torch.bfloat16))
        gptq_dequant.BLOCK_IN, gptq_dequant.BLOCK_OUT, gptq_dequant.NUM_WARPS = defaults
        best = min(v for k, v in row.items() if k.startswith("ours_"))
        row["ours_best_GBps"] = n_in * n_out * 2.5 / best / 1e6
        x = torch.randn(4096, n_in, device="cuda", dtype=torch.bfloat16)
        row["matmul_4096_ms"] = timed(lambda: x @ want)
        emit({"device": torch.cuda.get_device_name(0), **row}, args.out)


if __name__ == "__main__":
    main()
