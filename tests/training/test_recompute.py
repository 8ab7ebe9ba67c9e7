"""logivote.training.recompute: selective checkpointing saves the attention-like matmuls' outputs and recomputes the rest."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from logivote.training.recompute import keep_matmuls  # noqa: E402

H = 16


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


class Layer(nn.Module):
    """A decoder layer's matmuls in small: a narrow projection (q, k, v, o: H -> H), gate and up (H -> 4H), down (4H -> H)."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow, self.drop = nn.Linear(H, H), nn.Dropout(0.3)
        self.gate, self.up, self.down = nn.Linear(H, 4 * H), nn.Linear(H, 4 * H), nn.Linear(4 * H, H, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.narrow(x))
        return self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def test_selective_checkpointing_recomputes_only_the_unkept_wide_matmuls_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    layer = Layer()
    x = torch.randn(5, H, requires_grad=True)
    grads, backward_matmuls = {}, {}
    cases = {"full": {}, **{f"wide{n}": {"context_fn": keep_matmuls(H, wide=n)} for n in (0, 1, 2)}}
    for name, kwargs in cases.items():
        torch.manual_seed(1)  # the same dropout mask in every run
        out = checkpoint(layer, x, use_reentrant=False, **kwargs)
        with CountMatmuls() as count:
            grads[name] = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(),
                                              [x, *layer.parameters()])
        backward_matmuls[name] = count.calls
    # full checkpointing reruns the narrow, gate and up matmuls (the recompute stops before down); selective keeps
    # the narrow one's output, and the gate's (the first wide one) with wide=1, both wide ones' with wide=2
    saved = {name: backward_matmuls["full"] - backward_matmuls[name] for name in ("wide0", "wide1", "wide2")}
    assert saved == {"wide0": 1, "wide1": 2, "wide2": 3}, backward_matmuls
    for name in ("wide0", "wide1", "wide2"):
        for want, got in zip(grads["full"], grads[name]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
