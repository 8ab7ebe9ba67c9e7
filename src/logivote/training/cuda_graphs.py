"""A training step's forward and backward replayed as CUDA graphs, one per shape of packed stream (issue 19, point 4).

With one adapter per job the step is bound by the host: at full 32B depth the GPU is busy for about half of
it, the rest is Python launching thousands of small kernels (resources/benchmarks/README.md). A CUDA graph records
those launches once and replays them with one call. :class:`StepGraphs` wraps the loop's forward and
backward (``run(batch)``, which returns the rows' losses and leaves the gradients accumulated in place):

- a step's shape is the shapes of its packed stream's device tensors (:meth:`PackedBatch.device_tensors`)
  and its row count; with ``train.bucket_tokens`` they repeat (at most a few dozen at ``max_len`` 1800);
- the first step of a shape runs as it always did (eagerly), which also compiles or initialises whatever
  that shape needs first (Triton kernels, cuBLAS workspaces); the second captures ``run`` over a copy of
  the batch kept for that shape, and from then on each step of that shape copies its tensors into that copy
  and replays the graph; the caller gets a fresh copy of the losses (the graph's own output is overwritten
  by the next replay);
- every graph allocates from one memory pool. A step frees everything it allocated but its losses, and those
  are copied out right after each replay, so a graph only ever needs its memory while it runs, and graphs
  of different shapes can take turns in any order. The pool then holds about one step's activations
  (that of the largest shape captured), beside the memory the eager steps keep cached.

What ``run`` must allow, and :func:`graph_blockers` checks what it can of: nothing in it reads the device on
the host or allocates pinned memory (the batch's tensors, the adapters' run ends among them, are made before
the step: :func:`logivote.training.packing.pack`); attention through variable-length FlashAttention, which reads the
sequence boundaries from the device (``max_length`` is the bucket's length, a bound for every step of the
shape; the per-row fallback of older GPUs splits by lengths known on the host, which a graph would freeze);
gradients that stay where they are (:class:`logivote.training.stacked_adamw.StackedAdamW` keeps them as views of one
buffer, and backward adds into them in place); and nothing of a step's autograd graph alive after it (``run``
returns detached losses): a capture builds its gradient-accumulation nodes anew, on its own stream, and
cannot use the eager steps' ones. Dropout replays with fresh random numbers (PyTorch advances the
generator's offset at every replay), and gradient checkpointing captures too: its recompute's saving and
restoring of the random state is graph-safe in the torch of 2026 (checked on an H100: under replay the
recompute's dropout mask is the forward's). The optimizer step stays outside the graph (a few tensor
operations over the flat buffers, and it must skip steps between gradient-accumulation boundaries).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable

import torch

from .packing import PackedBatch

log = logging.getLogger(__name__)

# takes a step over the batch kept for its shape; returns what replays that step (and gives its losses)
Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]


def cuda_graph_capture() -> Capture:
    """Capture with ``torch.cuda.graph``, every graph in one memory pool (see the module docstring)."""
    pool = torch.cuda.graph_pool_handle()

    def capture(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = step()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay

    return capture


def shape_key(batch: PackedBatch) -> Hashable:
    """What one graph covers: the shapes of the batch's device tensors and its row count."""
    return (len(batch.lengths), *((name, tuple(t.shape)) for name, t in batch.device_tensors().items()))


class StepGraphs:
    """``run(batch)`` eagerly for a shape's first step, then replayed from a CUDA graph (module docstring)."""

    def __init__(self, run: Callable[[PackedBatch], torch.Tensor], capture: Capture | None = None) -> None:
        self.run = run
        self.capture = capture if capture is not None else cuda_graph_capture()
        self.seen: set[Hashable] = set()
        self.graphs: dict[Hashable, tuple[PackedBatch, Callable[[], torch.Tensor]]] = {}
        self.replays = 0

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        key = shape_key(batch)
        if key not in self.seen:
            self.seen.add(key)
            return self.run(batch)
        if key not in self.graphs:
            kept = dataclasses.replace(batch, max_length=int(batch.input_ids.shape[1]),
                                       **{name: t.clone() for name, t in batch.device_tensors().items()})
            self.graphs[key] = kept, self.capture(lambda: self.run(kept))
        kept, replay = self.graphs[key]
        for name, tensor in batch.device_tensors().items():
            getattr(kept, name).copy_(tensor, non_blocking=True)
        self.replays += 1
        return replay().clone()


def graph_blockers(devices: set[torch.device], dtype: torch.dtype) -> list[str]:
    """Why a step over a model on ``devices`` in ``dtype`` cannot be replayed from CUDA graphs here (empty: it can)."""
    from .packing import varlen_attention

    if any(d.type != "cuda" for d in devices):
        return ["the model is not (all) on a GPU"]
    if len(devices) > 1:
        return [f"the model is spread over {len(devices)} GPUs (a capture records one GPU's stream)"]
    if varlen_attention(next(iter(devices)), dtype) is None:
        return ["attention is not variable-length FlashAttention here (it needs an Ampere or newer GPU, bf16 or fp16, "
                "and torch.nn.attention.varlen)"]
    return []


def graphed(run: Callable[[PackedBatch], torch.Tensor], devices: set[torch.device],
            dtype: torch.dtype) -> Callable[[PackedBatch], torch.Tensor]:
    """``run`` replayed from CUDA graphs (:class:`StepGraphs`), or, where :func:`graph_blockers` finds a reason, ``run``
    itself with a warning that says why."""
    if blockers := graph_blockers(devices, dtype):
        log.warning("train.cuda_graphs: training without CUDA graphs: %s", "; ".join(blockers))
        return run
    log.info("CUDA graphs: each stream shape's forward and backward is captured at its second step and replayed")
    return StepGraphs(run)
