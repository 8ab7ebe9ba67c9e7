"""logivote.stacked_lora: per-token adapters as two dense GEMMs equal the per-row path of multi_lora."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from logivote.multi_lora import Active, LoraShape, MultiLoraLinear  # noqa: E402
from logivote.stacked_lora import StackedLoraLinear, TokenAdapters  # noqa: E402

K, R, IN, OUT = 3, 4, 24, 20


def layers() -> tuple[MultiLoraLinear, StackedLoraLinear, Active, TokenAdapters]:
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, dtype=torch.float64).requires_grad_(False)
    active, tokens = Active(), TokenAdapters()
    old = MultiLoraLinear(base, K, LoraShape(r=R, alpha=8), active, torch.float64, torch.device("cpu"))
    new = StackedLoraLinear(base, K, R, 8 / R, 0.0, tokens, torch.float64, "cpu")
    with torch.no_grad():
        for k in range(K):
            old.lora_A[k].normal_(); old.lora_B[k].normal_()  # noqa: E702
            new.lora_A[k].copy_(old.lora_A[k]); new.lora_B[k].copy_(old.lora_B[k])  # noqa: E702
    return old, new, active, tokens


def test_stacked_tokens_give_the_per_row_outputs_and_gradients() -> None:
    old, new, active, tokens = layers()
    lengths = {2: 5, 0: 7}  # adapter 2's row, then adapter 0's; adapter 1 sits this step out
    rows = {k: torch.randn(1, n, IN, dtype=torch.float64) for k, n in lengths.items()}
    active.ids = [2, 0]
    padded = torch.zeros(2, 7, IN, dtype=torch.float64)
    padded[0, :5], padded[1, :7] = rows[2][0], rows[0][0]
    want = old(padded)
    stream = torch.cat([rows[2], rows[0], torch.randn(1, 4, IN, dtype=torch.float64)], dim=1)  # + a bucket tail
    tokens.set(torch.tensor([2] * 5 + [0] * 7 + [-1] * 4), K)
    got = new(stream)
    assert torch.allclose(got[0, :5], want[0, :5], rtol=0, atol=1e-12)
    assert torch.allclose(got[0, 5:12], want[1, :7], rtol=0, atol=1e-12)
    assert torch.allclose(got[0, 12:], old.base(stream[0, 12:]), rtol=0, atol=1e-12)  # tail: the base alone
    weights = torch.randn_like(got)
    (want[0, :5] * weights[0, :5]).sum().add((want[1, :7] * weights[0, 5:12]).sum()).backward()
    (got * weights).sum().backward()  # the tail's weights must not reach any adapter
    for k in range(K):
        ga, gb = old.lora_A[k].grad, old.lora_B[k].grad
        if k == 1:
            assert ga is None and gb is None
            assert not new.lora_A.grad[k].any() and not new.lora_B.grad[k].any()
        else:
            assert torch.allclose(new.lora_A.grad[k], ga, rtol=0, atol=1e-10)
            assert torch.allclose(new.lora_B.grad[k], gb, rtol=0, atol=1e-10)


def test_a_token_count_that_does_not_match_fails() -> None:
    _, new, _, tokens = layers()
    tokens.set(torch.tensor([0, 1]), K)
    with pytest.raises(RuntimeError, match="3 tokens but 2 token adapters"):
        new(torch.randn(1, 3, IN, dtype=torch.float64))
