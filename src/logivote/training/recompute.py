"""Selective gradient checkpointing: a checkpointed decoder layer keeps its attention (and gate) projections' outputs.

Full checkpointing (``train.gradient_checkpointing: true``) keeps only each decoder layer's input and runs the
layer again in backward: one more forward of the frozen linears, a third of a step's GEMM work. The
recompute stops at the last tensor the backward needs, and the MLP's down projection comes after it (its
adapters run first on the grouped-GEMM path and its frozen GEMM saves no tensor: :mod:`logivote.training.stacked_lora`), so the recompute
already skips the down projection. ``gradient_checkpointing: selective`` also keeps the outputs of the
attention's projections: the matmuls whose input is ``hidden_size`` wide and whose output is at most that
(q, k, v and o, 13 % of a layer's weights at the 32B shape: 2 × 12 288 bytes per token per layer, about
9 GB at K = 21 and 270-token rows over 64 layers). ``selective_gate`` keeps the first matmul from
``hidden_size`` to more as well: the MLP's gate projection, which Qwen2's MLP calls before up (another 27 %
of the weights, 2 × 27 648 bytes per token per layer, about 20 GB at K = 21). Up and the grouped path's
adapter GEMMs are recomputed.

It is PyTorch's selective activation checkpointing (``torch.utils.checkpoint.create_selective_checkpoint_contexts``)
with a policy on the matmul's shapes, passed to transformers' gradient checkpointing as its ``context_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def keep_matmuls(hidden_size: int, wide: int = 0) -> Callable[[], Any]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint`` (non-reentrant): save the outputs of matmuls from
    ``hidden_size`` to at most ``hidden_size`` features and of the first ``wide`` matmuls from ``hidden_size`` to
    more, recompute the rest. Each checkpointed call gets its own count (one per layer), and
    the forward and its recompute count apart, so both make the same choice for the same matmul."""
    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten

    def contexts() -> Any:
        seen = {False: 0, True: 0}  # wide matmuls met so far: in the forward, in the recompute

        def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
            if op is aten.mm.default:
                mat1, mat2 = args[0], args[1]
            elif op is aten.addmm.default:
                mat1, mat2 = args[1], args[2]
            else:
                return CheckpointPolicy.PREFER_RECOMPUTE
            if mat1.shape[-1] != hidden_size:
                return CheckpointPolicy.PREFER_RECOMPUTE  # down and the adapters' B
            if mat2.shape[-1] <= hidden_size:
                return CheckpointPolicy.MUST_SAVE  # q, k, v, o (and the one-hot path's adapters' A)
            seen[ctx.is_recompute] += 1
            return CheckpointPolicy.MUST_SAVE if seen[ctx.is_recompute] <= wide else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return contexts
