"""The grouped CPU LoRA ops give what vLLM's own torch ops give (vLLM's ops run here as the reference)."""

from __future__ import annotations

import types

import pytest
import torch

from logivote.serving.cpu_lora import GROUPED_FROM_TOKENS, grouped_products, make_ops

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

H, R, OUT, SLOTS = 128, 8, 200, 4


def vllm_ops() -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: getattr(lora_ops, name) for name in make_ops(None)})


@pytest.fixture
def ops() -> dict:
    return make_ops(vllm_ops())


def batch(seed: int, lengths: list[int], adapters: list[int]) -> dict:
    """A prefill batch: sequences of ``lengths`` tokens, each with its adapter slot (-1 included, as vLLM may pass)."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    lens = torch.tensor(lengths)
    return {"x": torch.randn(tokens, H, generator=g).to(torch.bfloat16),
            "a": torch.randn(SLOTS, 1, R, H, generator=g).to(torch.bfloat16),  # vLLM's 4-D stacked LoRA A
            "b": torch.randn(SLOTS, OUT, R, generator=g).to(torch.bfloat16),  # and a 3-D B
            "meta": (torch.cumsum(lens, 0) - lens, lens, torch.tensor(adapters), len(lengths), max(lengths), tokens),
            "tokens": tokens}


@pytest.mark.parametrize(("lengths", "adapters"), [([150, 40, 300], [2, 0, 2]), ([200, 100], [-1, 3]), ([400], [1])])
def test_prefill_ops_match_vllms(ops: dict, lengths: list[int], adapters: list[int]) -> None:
    case = batch(len(lengths), lengths, adapters)
    assert case["tokens"] >= GROUPED_FROM_TOKENS  # the grouped path, not the fallback
    ours, theirs = torch.zeros(case["tokens"], R), torch.zeros(case["tokens"], R)
    ops["sgmv_shrink"](case["x"], case["a"], ours, *case["meta"], 0.5)
    lora_ops.sgmv_shrink(case["x"], case["a"], theirs, *case["meta"], 0.5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # float32: the sums' order alone differs
    assert ours.abs().sum() > 0
    start = torch.randn(case["tokens"], OUT + 24).to(torch.bfloat16)  # the model's output may be wider (padding)
    ours_out, theirs_out = start.clone(), start.clone()
    ops["sgmv_expand"](theirs, case["b"], ours_out, *case["meta"], True)
    lora_ops.sgmv_expand(theirs, case["b"], theirs_out, *case["meta"], True)
    torch.testing.assert_close(ours_out, theirs_out, rtol=1.6e-2, atol=1e-2)  # bfloat16: one rounding step at most
    assert (ours_out != start).any()
    wide = torch.zeros(case["tokens"], 3 * OUT).to(torch.bfloat16)
    ours_slice, theirs_slice = wide.clone(), wide.clone()
    ops["sgmv_expand_slice"](theirs, case["b"], ours_slice, *case["meta"], OUT, OUT, False)
    lora_ops.sgmv_expand_slice(theirs, case["b"], theirs_slice, *case["meta"], OUT, OUT, False)
    torch.testing.assert_close(ours_slice, theirs_slice, rtol=1.6e-2, atol=1e-2)
    assert ours_slice[:, :OUT].abs().sum() == 0 and ours_slice[:, 2 * OUT :].abs().sum() == 0


def test_each_row_uses_its_own_adapter() -> None:
    weights = torch.stack([torch.full((2, 3), float(k)) for k in range(3)])  # adapter k: every entry k
    rows = grouped_products(torch.ones(4, 3), weights, torch.tensor([2, 0, 1, -1]), torch.float32)
    assert rows.tolist() == [[6, 6], [0, 0], [3, 3], [6, 6]]  # -1: the last slot, as weights[indices] picks it


def test_short_batches_and_other_shapes_go_to_vllms_op() -> None:
    calls: list[str] = []
    reference = vllm_ops()
    spy = types.SimpleNamespace(**{name: (lambda name: lambda *a: calls.append(name) or getattr(reference, name)(*a))(name)
                                   for name in vars(reference)})
    ops = make_ops(spy)
    short = GROUPED_FROM_TOKENS - 1
    x, a = torch.randn(short, H).to(torch.bfloat16), torch.randn(SLOTS, R, H).to(torch.bfloat16)
    ops["bgmv_shrink"](x, a, torch.zeros(short, R), torch.zeros(short, dtype=torch.long), 1.0)
    long = GROUPED_FROM_TOKENS
    one_row = torch.randn(1, R)  # vLLM's op broadcasts a single input row: left to it
    ops["bgmv_expand"](one_row, torch.randn(SLOTS, OUT, R).to(torch.bfloat16), torch.zeros(long, OUT).to(torch.bfloat16),
                       torch.zeros(long, dtype=torch.long), True)
    assert calls == ["bgmv_shrink", "bgmv_expand"]
    ops["bgmv_shrink"](torch.randn(long, H).to(torch.bfloat16), a, torch.zeros(long, R), torch.zeros(long, dtype=torch.long), 1.0)
    assert calls == ["bgmv_shrink", "bgmv_expand"]  # a long batch is grouped
