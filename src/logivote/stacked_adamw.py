"""AdamW for K adapters stacked along dim 0 of every parameter, in a few tensor operations (issue 19, point 3).

Each parameter holds K adapters' slices (``[K, ...]``, as :mod:`logivote.stacked_lora` stores them). One
:meth:`StackedAdamW.step` does, for every adapter k at once, what K separate ``torch.optim.AdamW``
(weight decay 0 by default) after ``clip_grad_norm_(adapter k's parameters, max_grad_norm)`` would do:
per-adapter gradient norms as one reduction per parameter, per-adapter learning rates as a ``[K]``
tensor, per-adapter step counts, and a ``[K]`` mask of the adapters that step now. A masked adapter (its
stream has ended, or it is between gradient-accumulation boundaries) is left exactly as it was: weights,
moments and step count. Nothing is read back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class StackedAdamW:
    def __init__(self, params: Sequence[torch.nn.Parameter], k: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0) -> None:
        self.params = list(params)
        if any(p.shape[0] != k for p in self.params):
            raise ValueError(f"every parameter must stack {k} adapters along dim 0")
        self.k, self.betas, self.eps, self.weight_decay, self.max_grad_norm = k, betas, eps, weight_decay, max_grad_norm
        device = self.params[0].device
        self.steps = torch.zeros(k, dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def _per_adapter(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.dtype).view(self.k, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """Each adapter's gradient norm over all its parameters ([K]; float64 for float64 weights, else float32)."""
        dtype = torch.float64 if self.params[0].dtype == torch.float64 else torch.float32
        squares = [torch.linalg.vector_norm(p.grad.reshape(self.k, -1), dim=1, dtype=dtype).square() for p in self.params
                   if p.grad is not None]
        return torch.stack(squares).sum(0).sqrt() if squares else torch.zeros(self.k, dtype=dtype, device=self.steps.device)

    @torch.no_grad()
    def step(self, lrs: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Step the adapters where ``active`` ([K] bool; None: all) at learning rates ``lrs`` ([K]); returns the norms
        before clipping."""
        beta1, beta2 = self.betas
        norms = self.grad_norms()
        coef = torch.ones_like(norms) if self.max_grad_norm is None else (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        self.steps += 1 if active is None else active.to(self.steps.dtype)
        steps = self.steps.clamp(min=1)  # a never-stepped adapter is masked anyway
        bias1, bias2_sqrt = 1 - beta1 ** steps, (1 - beta2 ** steps).sqrt()
        lr = lrs.to(torch.float64)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            g = p.grad * self._per_adapter(coef, p)
            if active is None:  # the common case: every adapter steps, all in place
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / self._per_adapter(bias2_sqrt, p)).add_(self.eps)
                if self.weight_decay:
                    p.mul_(1 - self._per_adapter(lr * self.weight_decay, p))
                p.sub_(m / denom * self._per_adapter(lr / bias1, p))
                continue
            on = self._per_adapter(active, p).bool()
            m.copy_(torch.where(on, m.lerp(g, 1 - beta1), m))
            v.copy_(torch.where(on, v * beta2 + (1 - beta2) * g * g, v))
            denom = v.sqrt() / self._per_adapter(bias2_sqrt, p) + self.eps
            update = m / denom * self._per_adapter(lr / bias1, p)
            decayed = p * (1 - self._per_adapter(lr * self.weight_decay, p))
            p.copy_(torch.where(on, decayed - update, p))
        return norms

    @torch.no_grad()
    def zero_grad(self, stepped: torch.Tensor | None = None) -> None:
        """Clear the gradients of the adapters in ``stepped`` ([K] bool; default all); the others keep theirs
        (gradient accumulation between their boundaries)."""
        for p in self.params:
            if stepped is None or p.grad is None:
                p.grad = None
            else:
                p.grad.mul_(~self._per_adapter(stepped, p).bool())

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.clone(), "exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.copy_(state["steps"])
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)
