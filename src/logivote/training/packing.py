"""One training step's examples packed into a single token stream, with no padding between them.

The data contract of a step (issue 19, point 1): the rows of a step (one example per active adapter) are
laid end to end in one sequence of ``T`` tokens. Each row keeps its own positions (0, 1, …, n-1), and
attention stays within a row (:func:`packed_attention`), so a row sees exactly what it would see alone.
The lengths are known on the host, so the boundaries (``cu_seq_lens``) and the labelled positions are
built without any device sync. ``bucket`` rounds ``T`` up (e.g. to a multiple of 256) so that shapes
repeat from step to step; the tail is one more sequence of pad tokens, row -1 and adapter -1, which
nothing reads. Logits are computed only at ``label_at``: the hidden state before each labelled token.

:func:`packed_attention` is registered with transformers as the attention implementation ``"packed"``
(:func:`use_packed_attention`). It gets the boundaries through the model's keyword arguments (passed
down to every attention layer) and attends causally within each sequence: one variable-length
FlashAttention call on an Ampere or newer GPU (``torch.nn.attention.varlen``), one ``scaled_dot_product_attention`` per row
elsewhere; transformers builds no mask for it, so nothing syncs with the device. (transformers can also
infer a block-diagonal mask from ``position_ids`` alone, but that materialises a ``[T, T]`` mask,
costs a device sync, and attends over the whole stream on CPU: many times the per-row work at K = 11.)
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PackedBatch:
    input_ids: Any      # [1, T] long
    position_ids: Any   # [1, T] long: each row counts from 0; the bucket tail too
    token_adapter: Any  # [T] long: the adapter of every token (``adapters[row]``), -1 in the bucket tail
    cu_seq_lens: Any    # [S+1] int32: where each sequence starts (the rows, then the tail if any), and T
    label_at: Any       # [L] long: the stream position whose hidden state predicts a labelled token
    label_row: Any      # [L] long: its row
    targets: Any        # [L] long: the labelled token ids
    label_weight: Any   # [L] float32: 1 / the number of labelled tokens of its row (a row's loss is their mean)
    lengths: tuple[int, ...]  # tokens of each row, on the host
    seq_lengths: tuple[int, ...]  # tokens of each attention sequence (the rows, then the tail if any), on the host
    row_adapters: tuple[int, ...]  # the adapter of each row, on the host
    adapter_ends: Any = None  # [K] int32: the stream position after each adapter's run (:func:`adapter_ends`); None
    # where pack was not told K or the rows are not in adapter order
    max_length: int | None = None  # a bound on every sequence's length for the attention kernel (default: the longest)

    def attention_kwargs(self) -> dict[str, Any]:
        """What :func:`packed_attention` needs, as keyword arguments of the model's forward."""
        longest = max(self.seq_lengths) if self.max_length is None else self.max_length
        return {"cu_seq_lens_q": self.cu_seq_lens, "max_length_q": longest, "packed_lengths": self.seq_lengths}

    def device_tensors(self) -> dict[str, Any]:
        """The fields that live on the device (what a CUDA graph of a step reads: :mod:`logivote.training.cuda_graphs`)."""
        names = ("input_ids", "position_ids", "token_adapter", "cu_seq_lens", "label_at", "label_row", "targets",
                 "label_weight", "adapter_ends")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def total_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def pack(examples: Sequence[dict[str, list[int]]], pad_id: int, device: Any, bucket: int = 1,
         adapters: Sequence[int] | None = None, k: int | None = None) -> PackedBatch:
    """Pack ``examples`` (``input_ids`` and ``labels`` as :func:`logivote.data.prompt.encode_example` writes them);
    row i belongs to adapter ``adapters[i]`` (default: i) of ``k`` (given: the batch carries :func:`adapter_ends`)."""
    import torch

    if not examples:
        raise ValueError("pack: no examples")
    adapters = list(range(len(examples))) if adapters is None else list(adapters)
    if len(adapters) != len(examples):
        raise ValueError(f"pack: {len(examples)} rows but {len(adapters)} adapters")
    ids: list[int] = []
    positions: list[int] = []
    owners: list[int] = []
    label_at: list[int] = []
    label_row: list[int] = []
    targets: list[int] = []
    for row, example in enumerate(examples):
        start, n = len(ids), len(example["input_ids"])
        ids.extend(example["input_ids"])
        positions.extend(range(n))
        owners.extend([adapters[row]] * n)
        for pos, label in enumerate(example["labels"]):
            if label != -100:
                if pos == 0:
                    raise ValueError("pack: a row's first token cannot be labelled (nothing before it predicts it)")
                label_at.append(start + pos - 1)  # the hidden state before a token predicts it
                label_row.append(row)
                targets.append(label)
    real = len(ids)
    tail = -real % max(bucket, 1)
    ids.extend([pad_id] * tail)
    positions.extend(range(tail))
    owners.extend([-1] * tail)
    lengths = tuple(len(e["input_ids"]) for e in examples)
    seq_lengths = lengths + ((tail,) if tail else ())

    def as_long(xs: list[int]) -> Any:
        return to_device(xs, torch.long, device)

    counts = Counter(label_row)
    ends = None if k is None else adapter_ends(list(zip(adapters, lengths)), k, len(ids))
    return PackedBatch(
        input_ids=as_long(ids).unsqueeze(0),
        position_ids=as_long(positions).unsqueeze(0),
        token_adapter=as_long(owners),
        cu_seq_lens=to_device([0, *itertools.accumulate(seq_lengths)], torch.int32, device),
        label_at=as_long(label_at),
        label_row=as_long(label_row),
        targets=as_long(targets),
        label_weight=to_device([1.0 / counts[r] for r in label_row], torch.float32, device),
        lengths=lengths,
        seq_lengths=seq_lengths,
        row_adapters=tuple(adapters),
        adapter_ends=None if ends is None else to_device(ends, torch.int32, device),
    )


def adapter_ends(runs: Sequence[tuple[int, int]], k: int, total: int) -> list[int] | None:
    """Where each of ``k`` adapters' run of tokens ends in a stream of ``total`` tokens whose rows are the (adapter,
    tokens) ``runs``: the grouped LoRA GEMMs' offsets (:mod:`logivote.training.stacked_lora`). An adapter without a row ends
    where the one before it does; the bucket tail joins the last run. None where the runs are not one per adapter
    in adapter order."""
    adapters = [a for a, _ in runs]
    if any(not 0 <= a < k for a in adapters) or any(b <= a for a, b in zip(adapters, adapters[1:])):
        return None
    ends, at = [], 0
    lengths = dict(runs)
    for adapter in range(k):
        at += lengths.get(adapter, 0)
        ends.append(at)
    ends[-1] = total  # the bucket tail joins the last run
    return ends


def row_losses(logits: Any, batch: PackedBatch) -> Any:
    """Each row's mean cross-entropy over its labelled tokens ([R]); ``logits`` are those at ``batch.label_at``.
    (No ``bincount``: on CUDA it waits for the device to size its output.)"""
    import torch

    token_loss = torch.nn.functional.cross_entropy(logits.float(), batch.targets, reduction="none")
    weighted = token_loss * batch.label_weight.to(token_loss.dtype)
    return torch.zeros(len(batch.lengths), device=token_loss.device, dtype=token_loss.dtype).index_add(0, batch.label_row, weighted)


def to_device(values: Sequence[Any], dtype: Any, device: Any) -> Any:
    """A host list as a tensor on ``device`` without waiting for the device: from pinned memory on CUDA (a copy
    from pageable memory would first wait for the stream to drain, so the host could never run ahead)."""
    import torch

    tensor = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@functools.cache
def _varlen() -> Any:
    """torch's variable-length FlashAttention (``varlen_attn``), or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def cuda_capability(device: Any) -> tuple[int, int]:
    """A CUDA device's compute capability, asked once per device."""
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def varlen_attention(device: Any, dtype: Any) -> Any:
    """torch's variable-length FlashAttention where :func:`packed_attention` uses it for tensors on ``device`` in
    ``dtype`` (an Ampere or newer GPU, bf16 or fp16, a torch that has it), else None: per-row attention."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16) or cuda_capability(device) < (8, 0):
        return None
    return _varlen()


@functools.cache
def _parameters(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                     dropout: float = 0.0, packed_lengths: Sequence[int] | None = None, cu_seq_lens_q: Any = None,
                     max_length_q: int | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention within each packed sequence (transformers' attention-function signature).

    ``query`` is ``[1, H, T, D]``, ``key``/``value`` ``[1, H_kv, T, D]``; returns ``[1, T, H, D]``. Without
    ``packed_lengths`` (a plain forward, e.g. a check after training) every batch row is one causal
    sequence without padding.
    """
    import torch

    if dropout:
        raise ValueError("packed attention has no attention dropout (Qwen2's is 0)")
    gqa = query.shape[1] != key.shape[1]
    if packed_lengths is None:
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2), None
    if query.shape[0] != 1:
        raise ValueError(f"a packed stream is one batch row, got {query.shape[0]}")
    varlen = varlen_attention(query.device, query.dtype)  # a V100 attends row by row
    if varlen is not None:
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
        options = {"window_size": (-1, 0)} if "window_size" in _parameters(varlen) else {"is_causal": True}  # the torch of 2026 / 2.9
        if gqa and "enable_gqa" in _parameters(varlen):
            options["enable_gqa"] = True
        elif gqa:  # torch 2.11's varlen_attn takes no grouped heads: repeat them
            k, v = (t.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for t in (k, v))
        out = varlen(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling, **options)
        return out.unsqueeze(0), None
    pieces = []
    for q, k, v in zip(*(t.split(list(packed_lengths), dim=2) for t in (query, key, value))):
        pieces.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa))
    return torch.cat(pieces, dim=2).transpose(1, 2), None


def use_packed_attention(model: Any) -> None:
    """Make ``model`` attend with :func:`packed_attention` (registered with transformers as ``"packed"``)."""
    from transformers import AttentionInterface

    AttentionInterface.register("packed", packed_attention)
    model.set_attn_implementation("packed")
