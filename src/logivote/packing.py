"""One training step's examples packed into a single token stream, with no padding between them.

The data contract of a step (issue 19, point 1): the rows of a step (one example per active adapter) are
laid end to end in one sequence of ``T`` tokens. Each row keeps its own positions (0, 1, …, n-1), so
attention that stays within a row sees exactly what it would see alone; transformers' Qwen2 builds that
block-diagonal causal mask itself from ``position_ids`` when no ``attention_mask`` and no cache are given
(``masking_utils.find_packed_sequence_indices``). The lengths are known on the host, so the boundaries and
the labelled positions are built without any device sync. ``bucket`` rounds ``T`` up (e.g. to a multiple
of 256) so that shapes repeat from step to step; the tail is one more sequence of pad tokens, row -1,
which nothing reads. Logits are computed only at ``label_at``: the hidden state before each labelled token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PackedBatch:
    input_ids: Any      # [1, T] long
    position_ids: Any   # [1, T] long: each row counts from 0; the bucket tail too
    token_row: Any      # [T] long: the row (0..R-1) of every token, -1 in the bucket tail
    label_at: Any       # [L] long: the stream position whose hidden state predicts a labelled token
    label_row: Any      # [L] long: its row
    targets: Any        # [L] long: the labelled token ids
    lengths: tuple[int, ...]  # tokens of each row, on the host

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def total_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def pack(examples: Sequence[dict[str, list[int]]], pad_id: int, device: Any, bucket: int = 1) -> PackedBatch:
    """Pack ``examples`` (``input_ids`` and ``labels`` as :func:`logivote.prompt.encode_example` writes them)."""
    import torch

    if not examples:
        raise ValueError("pack: no examples")
    ids: list[int] = []
    positions: list[int] = []
    rows: list[int] = []
    label_at: list[int] = []
    label_row: list[int] = []
    targets: list[int] = []
    for row, example in enumerate(examples):
        start, n = len(ids), len(example["input_ids"])
        ids.extend(example["input_ids"])
        positions.extend(range(n))
        rows.extend([row] * n)
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
    rows.extend([-1] * tail)

    def as_long(xs: list[int]) -> Any:
        return torch.tensor(xs, dtype=torch.long).to(device, non_blocking=True)

    return PackedBatch(
        input_ids=as_long(ids).unsqueeze(0),
        position_ids=as_long(positions).unsqueeze(0),
        token_row=as_long(rows),
        label_at=as_long(label_at),
        label_row=as_long(label_row),
        targets=as_long(targets),
        lengths=tuple(len(e["input_ids"]) for e in examples),
    )


def row_losses(logits: Any, batch: PackedBatch) -> Any:
    """Each row's mean cross-entropy over its labelled tokens ([R]); ``logits`` are those at ``batch.label_at``."""
    import torch

    token_loss = torch.nn.functional.cross_entropy(logits.float(), batch.targets, reduction="none")
    n_rows = len(batch.lengths)
    counts = torch.bincount(batch.label_row, minlength=n_rows).clamp(min=1)
    return torch.zeros(n_rows, device=token_loss.device, dtype=token_loss.dtype).index_add(0, batch.label_row, token_loss) / counts
