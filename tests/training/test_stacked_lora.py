"""logivote.training.stacked_lora: per-token adapters as two dense GEMMs equal each row through its own adapter alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from logivote.training import stacked_lora  # noqa: E402
from logivote.training.packing import adapter_ends  # noqa: E402
from logivote.training.stacked_lora import StackedLoraLinear, TokenAdapters  # noqa: E402

K, R, IN, OUT, SCALE = 3, 4, 24, 20, 2.0


def layer(dtype: torch.dtype = torch.float64) -> tuple[StackedLoraLinear, TokenAdapters, list[nn.Parameter], list[nn.Parameter]]:
    """The stacked layer, and every adapter's A and B as separate parameters with the same values (the reference)."""
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, dtype=dtype).requires_grad_(False)
    tokens = TokenAdapters()
    new = StackedLoraLinear(base, K, R, SCALE, 0.0, tokens, dtype, "cpu")
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


@pytest.mark.skipif(stacked_lora._grouped_mm() is None, reason="this torch has no grouped_mm")
@pytest.mark.parametrize("runs", [((0, 7), (2, 5)), ((2, 5), (0, 7))], ids=["adapter-order", "out-of-order"])
def test_grouped_gemms_give_the_one_hot_paths_outputs_and_gradients(runs: tuple[tuple[int, int], ...],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in adapter order go through two grouped GEMMs (each token only its own adapter's r columns), with
    adapter 1 empty and the bucket tail in the last run; runs out of order keep the one-hot GEMMs. float32: the
    precision grouped_mm has on CPU."""
    results = {}
    for path in ("onehot", "grouped"):
        monkeypatch.setattr(stacked_lora, "LORA_GEMM", path)
        new, tokens, _, _ = layer(torch.float32)
        stream = torch.randn(1, 12 + 4, IN, generator=torch.Generator().manual_seed(1), requires_grad=True)
        ends = adapter_ends(runs, K, 12 + 4)
        assert (ends is not None) == (runs[0][0] == 0)
        tokens.set(torch.tensor([a for a, n in runs for _ in range(n)] + [-1] * 4), K,
                   ends=None if ends is None else torch.tensor(ends, dtype=torch.int32))
        got = new(stream)[0]
        weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(2))
        weights[12:] = 0  # the tail feeds no loss
        (got * weights).sum().backward()
        results[path] = (got[:12].detach(), new.lora_A.grad, new.lora_B.grad, stream.grad)
    for want, got in zip(results["onehot"], results["grouped"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert results["grouped"][1][1].abs().max() == 0 and results["grouped"][1][0].abs().max() > 0  # adapter 1: no tokens


def test_adapter_ends_follow_the_runs_and_give_the_tail_to_the_last_adapter() -> None:
    assert adapter_ends([(0, 7), (2, 5)], 4, 16) == [7, 7, 12, 16]
    assert adapter_ends([(1, 3)], 2, 3) == [0, 3]
    assert adapter_ends([(2, 5), (0, 7)], 3, 12) is None  # not in adapter order
    assert adapter_ends([(0, 5), (0, 7)], 3, 12) is None  # one adapter twice
    assert adapter_ends([(3, 5)], 3, 5) is None  # no such adapter


@pytest.mark.skipif(stacked_lora._grouped_mm() is None, reason="this torch has no grouped_mm")
def test_grouped_gemms_need_rows_aligned_to_16_bytes_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's grouped GEMM refuses operands whose rows do not start at multiples of 16 bytes (r = 4 in bf16):
    such a layer keeps the one-hot GEMMs. The CPU kernel has no such rule."""
    monkeypatch.setattr(stacked_lora, "LORA_GEMM", "grouped")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert stacked_lora._use_grouped(cuda, torch.bfloat16, (8, 128, 1024))
    assert not stacked_lora._use_grouped(cuda, torch.bfloat16, (4, 128, 1024))
    assert not stacked_lora._use_grouped(cuda, torch.bfloat16, (8, 100, 1024))
    assert stacked_lora._use_grouped(cuda, torch.float32, (4, 128, 1024))
    assert stacked_lora._use_grouped(cpu, torch.bfloat16, (4, 100, 1024))


@pytest.mark.skipif(stacked_lora._grouped_mm() is None, reason="this torch has no grouped_mm")
def test_auto_takes_the_grouped_gemms_on_the_cpu_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2-core default trains in float32 on the CPU: "auto" gives it the grouped GEMMs (issue 42: its training
    jobs about 15 % faster); bf16 on the CPU was not measured and keeps the one-hot GEMMs, as "onehot" does everywhere."""
    cpu = torch.device("cpu")
    assert stacked_lora.LORA_GEMM == "auto"
    assert stacked_lora._use_grouped(cpu, torch.float32, (8, 128, 256))
    assert not stacked_lora._use_grouped(cpu, torch.bfloat16, (8, 128, 256))
    monkeypatch.setattr(stacked_lora, "LORA_GEMM", "onehot")
    assert not stacked_lora._use_grouped(cpu, torch.float32, (8, 128, 256))
