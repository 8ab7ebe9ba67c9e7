"""Benchmark (not a test): the fused RMSNorm, SwiGLU and rotary embedding (:mod:`logivote.training.fused`) against
transformers' eager forms at the 32B shape, forward + backward over one step's token stream, on a CUDA GPU.

Prints one JSON line per case: eager and fused milliseconds, their ratio, and the largest difference of the
outputs and input gradients against eager (bf16 rounding, not bit for bit: the fused forms round once).

    python -m logivote.bench.fused [--tokens 5760] [--out fused.jsonl]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from logivote.bench.dequant import emit, timed
from logivote.training import fused


def _outputs(out: Any) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _case(name: str, eager: Callable[..., Any], fast: Callable[..., Any], inputs: list[torch.Tensor], tokens: int) -> dict[str, Any]:
    grads = tuple(torch.randn_like(o) for o in _outputs(eager(*inputs)))

    def run(fn: Callable[..., Any]) -> Callable[[], Any]:
        def step() -> Any:
            leaves = [t.detach().requires_grad_() for t in inputs]
            out = _outputs(fn(*leaves))
            return (*out, *torch.autograd.grad(out, leaves, grads))
        return step

    ref, got = run(eager)(), run(fast)()
    worst = max(float((a.detach().float() - b.detach().float()).abs().max()) for a, b in zip(ref, got))
    scale = max(float(a.detach().float().abs().max()) for a in ref)
    eager_ms, fused_ms = timed(run(eager)), timed(run(fast))
    return {"case": name, "tokens": tokens, "eager_ms": round(eager_ms, 3), "fused_ms": round(fused_ms, 3),
            "speedup": round(eager_ms / fused_ms, 2), "max_abs_diff": worst, "max_abs": scale}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=5760, help="a step's packed tokens (K = 21: about 21 x 270)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, apply_rotary_pos_emb

    gen = torch.Generator(device="cuda").manual_seed(0)
    dt, hidden, inter = torch.bfloat16, 5120, 27648
    norm = Qwen2RMSNorm(hidden).to("cuda", dt)
    norm.weight.data.uniform_(0.5, 1.5, generator=gen)
    x = torch.randn(args.tokens, hidden, device="cuda", dtype=dt, generator=gen)
    gate, up = (torch.randn(args.tokens, inter, device="cuda", dtype=dt, generator=gen) for _ in range(2))
    # q and k as the projections' per-head views ([1, H, T, D] over [1, T, H·D]); cos and sin as Qwen2's rotary
    # embedding makes them (each frequency twice)
    q = torch.randn(1, args.tokens, 40, 128, device="cuda", dtype=dt, generator=gen).transpose(1, 2)
    k = torch.randn(1, args.tokens, 8, 128, device="cuda", dtype=dt, generator=gen).transpose(1, 2)
    angles = torch.rand(1, args.tokens, 64, device="cuda", generator=gen) * 1000
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dt) for f in (torch.cos, torch.sin))
    fused_norm = lambda t: fused._fused_rms_norm_forward(norm, t)  # noqa: E731
    rows = [_case("rms_norm", norm, fused_norm, [x], args.tokens),
            _case("silu_mul", lambda g, u: torch.nn.functional.silu(g) * u, fused.silu_mul, [gate, up], args.tokens),
            _case("rotary", lambda a, b: apply_rotary_pos_emb(a, b, cos, sin), lambda a, b: fused.Rotary.apply(a, b, cos, sin),
                  [q, k], args.tokens)]
    saved = [row["eager_ms"] - row["fused_ms"] for row in rows]
    rows.append({"case": "per_layer_x64_ms_saved (norms x2 + silu_mul + rotary, one pass each)",
                 "ms": round(64 * (2 * saved[0] + saved[1] + saved[2]), 1)})
    for row in rows:
        emit({"device": torch.cuda.get_device_name(0), **row}, args.out)


if __name__ == "__main__":
    main()
