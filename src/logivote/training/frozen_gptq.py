"""A frozen GPTQ-Int4 linear in training that keeps only its int4 weights between forward and backward
(issue 19, point 5).

gptqmodel's trainable linears compute ``x @ dequantize_weight().to(x.dtype) + bias``. Through autograd
that keeps every dequantized weight (in the compute dtype) alive from its layer's forward to its
backward: at full depth, a bf16 copy of the whole base on top of its int4 one. :func:`frozen_forward`
computes the same product through a small autograd function that saves nothing of the weight and
dequantizes again in backward (the weight is frozen: only the input's gradient is needed). The
numbers are the module's own training path's; only the memory differs, at the price of one more
dequantization per linear per step.

Under gradient checkpointing each decoder layer runs its forward twice, the second time in backward
just before the layer's gradients. There the weight is worth keeping: ``keep_weight`` saves the
dequantized weight for the backward, which the checkpoint drops after the first forward and holds from
the recompute to the layer's backward only, one layer's weights at a time. A linear then dequantizes
twice per step instead of three times. Without checkpointing ``keep_weight`` would keep the whole base
in bf16, so it is only for checkpointed layers.

Where :mod:`logivote.training.gptq_dequant` supports the module (a GPU, consecutive groups), the weight comes
from its one-pass kernel, with the same bits as gptqmodel's torch path.
"""

from __future__ import annotations

from typing import Any

import torch

from . import fp8_frozen, gptq_dequant


def is_gptq(module: Any) -> bool:
    """A gptqmodel quantized linear (``qweight`` + ``dequantize_weight``)."""
    return hasattr(module, "qweight") and callable(getattr(module, "dequantize_weight", None)) and hasattr(module, "g_idx")


def _weight(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """``W^T`` as ``[in, out]`` in ``dtype``, as gptqmodel's training path builds it."""
    if gptq_dequant.supports(module):
        return gptq_dequant.dequantize(module, dtype)
    return module.dequantize_weight(num_itr=module.g_idx.shape[0] // module.in_features).to(dtype)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, addend: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight + bias + addend`` in ``x``'s dtype (an fp16 bias must not promote a bf16 output to float32),
    the additions in the GEMM (``addmm``), out of place: selective checkpointing may keep this very tensor
    (:mod:`logivote.training.recompute`)."""
    if bias is not None:
        addend = bias.to(x.dtype) if addend is None else addend + bias.to(x.dtype)
    return x @ weight if addend is None else torch.addmm(addend, x, weight)


class _Int4MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: Any, keep_weight: bool,  # type: ignore[override]
                addend: torch.Tensor | None) -> torch.Tensor:
        weight = _weight(module, x.dtype)
        ctx.module, ctx.keep_weight = module, keep_weight
        if keep_weight:
            ctx.save_for_backward(weight)
        return _affine(x, weight, module.bias, addend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, torch.Tensor | None]:  # type: ignore[override]
        weight = ctx.saved_tensors[0] if ctx.keep_weight else _weight(ctx.module, grad.dtype)
        return grad @ weight.t(), None, None, grad if ctx.needs_input_grad[3] else None


class _FrozenMatMul(torch.autograd.Function):
    """``x @ W^T`` of a frozen float linear, its weight reached through the module rather than saved: a checkpoint
    then has nothing of this GEMM to recompute (see :data:`logivote.training.stacked_lora.RECOMPUTE_STOPS_BEFORE`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: Any, addend: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        return _affine(x, module.weight.t(), module.bias, addend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor | None]:  # type: ignore[override]
        return grad @ ctx.module.weight, None, grad if ctx.needs_input_grad[2] else None


def frozen_forward(module: Any, x: torch.Tensor, keep_weight: bool = False, addend: torch.Tensor | None = None,
                   fp8: bool = False) -> torch.Tensor:
    """``module(x)`` (``+ addend``, shaped as the output, added inside the GEMM); for a GPTQ linear while autograd
    records, without keeping its dequantized weight (``keep_weight``: keep it for the backward; only inside a
    checkpointed layer, see the module docstring); for a frozen float ``nn.Linear``, without saving its weight as
    a tensor of the backward. ``fp8``: the GEMMs in FP8 e4m3 (:mod:`logivote.training.fp8_frozen`; the caller
    checked :func:`logivote.training.fp8_frozen.supports`)."""
    if fp8:
        return fp8_frozen.fp8_forward(module, x, keep_weight, addend)
    flat = None if addend is None else addend.reshape(-1, module.out_features)
    if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad and torch.is_grad_enabled():
        out = _FrozenMatMul.apply(x.reshape(-1, x.shape[-1]), module, flat)
    elif is_gptq(module) and (torch.is_grad_enabled() or gptq_dequant.supports(module)):
        out = _Int4MatMul.apply(x.reshape(-1, x.shape[-1]), module, keep_weight, flat)
    else:
        return module(x) if addend is None else module(x) + addend
    return out.reshape(*x.shape[:-1], module.out_features)
