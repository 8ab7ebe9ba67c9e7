"""logivote.training.stacked_adamw: one step for K stacked adapters equals K AdamW optimizers with per-adapter clipping."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from logivote.training.stacked_adamw import StackedAdamW  # noqa: E402

K = 3
SHAPES = [(K, 4, 6), (K, 5, 4)]


@pytest.mark.parametrize("chunk", [None, 5])  # the flat buffer updated in one piece, or in blocks of 5 elements
def test_stacked_step_equals_k_separate_adamw_with_clipping_and_masks(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        monkeypatch.setattr("logivote.training.stacked_adamw.CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    stacked = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    separate = [[torch.nn.Parameter(p.detach()[k].clone()) for p in stacked] for k in range(K)]
    opt = StackedAdamW(stacked, K, max_grad_norm=1.0)
    lrs = torch.tensor([1e-2, 3e-3, 5e-2], dtype=torch.float64)
    reference = [torch.optim.AdamW(ps, lr=float(lrs[k]), eps=1e-8, weight_decay=0.0, foreach=False) for k, ps in enumerate(separate)]
    masks = [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]  # adapter 1 sits steps out
    for step, mask in enumerate(masks):
        grads = [torch.randn(s, dtype=torch.float64) * (0.1 if step % 2 else 3.0) for s in SHAPES]  # some clipped
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        opt.step(lrs, None if all(mask) else torch.tensor(mask, dtype=torch.bool))  # None: every adapter, in place
        for k in range(K):
            if not mask[k]:
                continue
            for p, g in zip(separate[k], grads):
                p.grad = g[k].clone()
            torch.nn.utils.clip_grad_norm_(separate[k], 1.0)
            reference[k].step()
        for k in range(K):
            for p, q in zip(stacked, separate[k]):
                assert torch.allclose(p.detach()[k], q.detach(), rtol=0, atol=1e-12), (step, k)
    assert opt.steps.tolist() == [sum(m[k] for m in masks) for k in range(K)]


def test_a_masked_adapter_does_not_move_at_all() -> None:
    torch.manual_seed(1)
    stacked = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    opt = StackedAdamW(stacked, K)
    before = [p.detach().clone() for p in stacked]
    for p in stacked:
        p.grad = torch.randn_like(p)
    opt.step(torch.full((K,), 1e-2, dtype=torch.float64), torch.tensor([True, False, True]))
    for p, b in zip(stacked, before):
        assert torch.equal(p.detach()[1], b[1]) and not torch.equal(p.detach()[0], b[0])
    assert not opt.exp_avg[1].any() and not opt.exp_avg_sq[1].any() and opt.exp_avg[0].any()
    with pytest.raises(ValueError, match="stack 3 adapters"):
        StackedAdamW([torch.nn.Parameter(torch.zeros(2, 3))], K)


def test_zero_grad_clears_only_the_adapters_that_stepped() -> None:
    stacked = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    opt = StackedAdamW(stacked, K)
    for p in stacked:
        p.grad = torch.ones_like(p)
    opt.zero_grad(torch.tensor([True, False, True]))
    for p in stacked:
        assert not p.grad[0].any() and not p.grad[2].any() and bool((p.grad[1] == 1).all())
    opt.zero_grad()
    assert all(not p.grad.any() for p in stacked)


def test_parameters_and_gradients_live_in_one_flat_buffer() -> None:
    """Backward accumulates into the flat gradient in place, so a step sees it without copying."""
    layer = torch.nn.Parameter(torch.randn(K, 4, 6, dtype=torch.float64))
    opt = StackedAdamW([layer], K)
    x = torch.randn(K, 6, 5, dtype=torch.float64)
    (layer @ x).sum().backward()
    assert layer.grad.data_ptr() == opt.grads.data_ptr()
    assert torch.allclose(opt.grads.view(K, 4, 6), x.sum(-1)[:, None, :].expand(K, 4, 6), rtol=0, atol=1e-12)
    before = layer.detach().clone()
    opt.step(torch.full((K,), 1e-2, dtype=torch.float64))
    assert layer.data_ptr() == opt.weights.data_ptr() and not torch.equal(layer.detach(), before)
