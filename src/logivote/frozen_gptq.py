"""A frozen GPTQ-Int4 linear in training that keeps only its int4 weights between forward and backward
(issue 19, point 5).

gptqmodel's trainable linears compute ``x @ dequantize_weight().to(x.dtype) + bias``. Through autograd
that keeps every dequantized weight (in the compute dtype) alive from its layer's forward to its
backward: at full depth, a bf16 copy of the whole base on top of its int4 one. :func:`frozen_forward`
computes the same product through a small autograd function that saves nothing of the weight and
dequantizes again in backward (the weight is frozen: only the input's gradient is needed). The
numbers are the module's own training path's; only the memory differs, at the price of one more
dequantization per linear per step (two with gradient checkpointing's recompute).
"""

from __future__ import annotations

from typing import Any

import torch


def is_gptq(module: Any) -> bool:
    """A gptqmodel quantized linear (``qweight`` + ``dequantize_weight``)."""
    return hasattr(module, "qweight") and callable(getattr(module, "dequantize_weight", None)) and hasattr(module, "g_idx")


def _weight(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """``W^T`` as ``[in, out]`` in ``dtype``, as gptqmodel's training path builds it."""
    return module.dequantize_weight(num_itr=module.g_idx.shape[0] // module.in_features).to(dtype)


class _Int4MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        return x @ _weight(module, x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad @ _weight(ctx.module, grad.dtype).t(), None


def frozen_forward(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; for a GPTQ linear while autograd records, without keeping its dequantized weight."""
    if not (is_gptq(module) and torch.is_grad_enabled()):
        return module(x)
    out = _Int4MatMul.apply(x.reshape(-1, x.shape[-1]), module)
    if module.bias is not None:
        out.add_(module.bias)  # in place, as the kernel does: an fp16 bias must not promote a bf16 output to float32
    return out.reshape(*x.shape[:-1], module.out_features)
