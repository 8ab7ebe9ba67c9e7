"""logivote.recompute: selective checkpointing saves the attention-like matmuls' outputs and recomputes the rest."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from logivote.recompute import keep_narrow_matmuls  # noqa: E402

H = 16


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def test_selective_checkpointing_recomputes_only_the_wide_matmul_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    # a layer's shape in small: a narrow projection (q, k, v, o: H -> H), a wide one (gate, up: H -> 4H), down (4H -> H)
    layer = nn.Sequential(nn.Linear(H, H), nn.Dropout(0.3), nn.Linear(H, 4 * H), nn.SiLU(), nn.Linear(4 * H, H, bias=False))
    x = torch.randn(5, H, requires_grad=True)
    grads, backward_matmuls = {}, {}
    for name, kwargs in (("full", {}), ("selective", {"context_fn": keep_narrow_matmuls(H)})):
        torch.manual_seed(1)  # the same dropout mask in both runs
        out = checkpoint(layer, x, use_reentrant=False, **kwargs)
        with CountMatmuls() as count:
            grads[name] = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(),
                                              [x, *layer.parameters()])
        backward_matmuls[name] = count.calls
    # the backward reruns the narrow projection's forward matmul under full checkpointing only
    assert backward_matmuls["full"] - backward_matmuls["selective"] == 1, backward_matmuls
    for want, got in zip(grads["full"], grads["selective"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
