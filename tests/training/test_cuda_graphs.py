"""logivote.training.cuda_graphs on CPU: which steps share a graph, what a replay reads, and when graphs are refused.
(Training through real graphs on a GPU: tests/training/test_train.py::test_steps_replayed_from_graphs_train_the_same_adapters.)"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from logivote.training.cuda_graphs import StepGraphs, graph_blockers, graphed, shape_key  # noqa: E402
from logivote.training.packing import PackedBatch, pack  # noqa: E402

PAD = 0


def row(n: int, first: int = 1) -> dict[str, list[int]]:
    ids = list(range(first, first + n))
    return {"input_ids": ids, "labels": [-100] * (n - 2) + ids[-2:]}


def test_steps_share_a_graph_when_their_device_tensors_have_the_same_shapes() -> None:
    one = shape_key(pack([row(20)], PAD, "cpu", 16, k=1))
    assert shape_key(pack([row(27, first=5)], PAD, "cpu", 16, k=1)) == one  # other tokens, same bucket
    assert shape_key(pack([row(40)], PAD, "cpu", 16, k=1)) != one  # a longer bucket
    assert shape_key(pack([row(32)], PAD, "cpu", 16, k=1)) != one  # no bucket tail: one sequence fewer
    assert shape_key(pack([row(10), row(10)], PAD, "cpu", 16, adapters=[0, 1], k=2)) != \
        shape_key(pack([row(20)], PAD, "cpu", 16, adapters=[0], k=2))  # two rows, not one


def test_a_shape_runs_eagerly_first_then_replays_its_capture_over_the_kept_batch() -> None:
    """A stand-in capture that, like CUDA's, does not run the step when capturing: it hands back a replay that
    runs the step over the batch kept for the shape, and returns the same output tensor every time."""
    seen: list[tuple[str, PackedBatch]] = []
    captures: list[int] = []

    def run(batch: PackedBatch) -> Any:
        seen.append(("run", batch))
        return batch.input_ids.sum(dim=1, dtype=torch.float64) + batch.attention_kwargs()["max_length_q"]

    def capture(step: Any) -> Any:
        captures.append(1)
        out = torch.zeros(1, dtype=torch.float64)

        def replay() -> Any:
            return out.copy_(step())

        return replay

    graphs = StepGraphs(run, capture)
    batches = [pack([row(n, first)], PAD, "cpu", 16, k=1) for n, first in ((20, 1), (27, 5), (25, 9), (40, 1))]
    got = [graphs(b) for b in batches]
    assert len(captures) == 1 and graphs.replays == 2 and len(graphs.graphs) == 1
    assert seen[0][1] is batches[0] and seen[-1][1] is batches[3]  # the first of each shape: eager, over itself
    kept = seen[1][1]
    assert kept is seen[2][1] and kept is not batches[1]  # the replays: over one kept batch
    assert kept.max_length == 32  # the bucket: a bound for every step of the shape
    for batch, loss in zip(batches, got):
        longest = 32 if batch is not batches[0] and batch is not batches[3] else max(batch.seq_lengths)
        assert float(loss) == float(batch.input_ids.sum()) + longest  # each step's own tokens
    assert got[1] is not got[2]  # copies: the next replay overwrites the graph's output


def test_graphs_are_refused_where_a_capture_cannot_record_the_step() -> None:
    assert graph_blockers({torch.device("cpu")}, torch.bfloat16) == ["the model is not (all) on a GPU"]
    assert "spread over 2 GPUs" in graph_blockers({torch.device("cuda", 0), torch.device("cuda", 1)}, torch.bfloat16)[0]


def test_where_graphs_are_refused_training_warns_and_runs_the_step_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    def run(batch: PackedBatch) -> Any:
        return batch.input_ids.sum()

    with caplog.at_level("WARNING", logger="logivote.training.cuda_graphs"):
        assert graphed(run, {torch.device("cpu")}, torch.float32) is run
    assert "training without CUDA graphs: the model is not (all) on a GPU" in caplog.text
