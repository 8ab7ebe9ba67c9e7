"""Selective gradient checkpointing: a checkpointed decoder layer keeps its attention projections' outputs.

Full checkpointing (``train.gradient_checkpointing: true``) keeps only each decoder layer's input and runs the
layer again in backward: one more forward of the frozen linears, a third of a step's GEMM work. The
recompute stops at the last tensor the backward needs, and the MLP's down projection comes after it (its
adapters run first on the grouped-GEMM path and its frozen GEMM saves no tensor: :mod:`logivote.stacked_lora`), so the recompute
already skips the down projection. ``gradient_checkpointing: selective`` also keeps the outputs of the
attention's projections: the matmuls whose input is ``hidden_size`` wide and whose output is at most that
(q, k, v and o; not gate and up, ``intermediate_size`` wide, nor the adapters' GEMMs). At the 32B shape
those are 13 % of a layer's weights, for 2 × 12 288 bytes per token per layer: about 9 GB at K = 21 and
270-token rows over 64 layers.

It is PyTorch's selective activation checkpointing (``torch.utils.checkpoint.create_selective_checkpoint_contexts``)
with a policy on the matmul's shapes, passed to transformers' gradient checkpointing as its ``context_fn``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable


def _policy(hidden_size: int, ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    import torch
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    if op is aten.mm.default:
        mat1, mat2 = args[0], args[1]
    elif op is aten.addmm.default:
        mat1, mat2 = args[1], args[2]
    else:
        return CheckpointPolicy.PREFER_RECOMPUTE
    attention = mat1.shape[-1] == hidden_size and mat2.shape[-1] <= hidden_size  # q, k, v, o
    return CheckpointPolicy.MUST_SAVE if attention else CheckpointPolicy.PREFER_RECOMPUTE


def keep_narrow_matmuls(hidden_size: int) -> Callable[[], Any]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint`` (non-reentrant): save the outputs of matmuls
    from ``hidden_size`` to at most ``hidden_size`` features, recompute the rest."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return functools.partial(create_selective_checkpoint_contexts, functools.partial(_policy, hidden_size))
