"""logivote.stacked_lora: per-token adapters as two dense GEMMs equal each row through its own adapter alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from logivote.stacked_lora import StackedLoraLinear, TokenAdapters  # noqa: E402

K, R, IN, OUT, SCALE = 3, 4, 24, 20, 2.0


def layer() -> tuple[StackedLoraLinear, TokenAdapters, list[nn.Parameter], list[nn.Parameter]]:
    """The stacked layer, and every adapter's A and B as separate parameters with the same values (the reference)."""
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, dtype=torch.float64).requires_grad_(False)
    tokens = TokenAdapters()
    new = StackedLoraLinear(base, K, R, SCALE, 0.0, tokens, torch.float64, "cpu")
    with torch.no_grad():
        new.lora_A.normal_()
        new.lora_B.normal_()
    a = [nn.Parameter(new.lora_A.detach()[k].clone()) for k in range(K)]
    b = [nn.Parameter(new.lora_B.detach()[k].clone()) for k in range(K)]
    return new, tokens, a, b


def test_stacked_tokens_give_each_rows_own_adapter_outputs_and_gradients() -> None:
    new, tokens, a, b = layer()
    lengths = {2: 5, 0: 7}  # adapter 2's row, then adapter 0's; adapter 1 sits this step out
    rows = {k: torch.randn(n, IN, dtype=torch.float64) for k, n in lengths.items()}
    want = {k: new.base(x) + x @ a[k].t() @ b[k].t() * SCALE for k, x in rows.items()}  # the row alone
    tail = torch.randn(4, IN, dtype=torch.float64)
    stream = torch.cat([rows[2], rows[0], tail]).unsqueeze(0)  # + a bucket tail
    tokens.set(torch.tensor([2] * 5 + [0] * 7 + [-1] * 4), K)
    got = new(stream)[0]
    assert torch.allclose(got[:5], want[2], rtol=0, atol=1e-12)
    assert torch.allclose(got[5:12], want[0], rtol=0, atol=1e-12)
    assert torch.allclose(got[12:], new.base(tail), rtol=0, atol=1e-12)  # tail: the base alone
    weights = torch.randn_like(got)
    ((want[2] * weights[:5]).sum() + (want[0] * weights[5:12]).sum()).backward()
    (got * weights).sum().backward()  # the tail's weights must not reach any adapter
    for k in range(K):
        if k == 1:
            assert a[k].grad is None and b[k].grad is None
            assert not new.lora_A.grad[k].any() and not new.lora_B.grad[k].any()
        else:
            assert torch.allclose(new.lora_A.grad[k], a[k].grad, rtol=0, atol=1e-10)
            assert torch.allclose(new.lora_B.grad[k], b[k].grad, rtol=0, atol=1e-10)


def test_one_adapter_for_every_token() -> None:
    new, tokens, a, b = layer()
    x = torch.randn(2, 3, IN, dtype=torch.float64)
    tokens.set(None, K, single=1)
    assert torch.allclose(new(x), new.base(x) + x @ a[1].t() @ b[1].t() * SCALE, rtol=0, atol=1e-12)


def test_a_token_count_that_does_not_match_fails() -> None:
    new, tokens, _, _ = layer()
    tokens.set(torch.tensor([0, 1]), K)
    with pytest.raises(RuntimeError, match="3 tokens but 2 token adapters"):
        new(torch.randn(1, 3, IN, dtype=torch.float64))
