"""AdamW for K adapters stacked along dim 0 of every parameter, in a few tensor operations (issue 19, point 3).

Each parameter holds K adapters' slices (``[K, ...]``, as :mod:`logivote.training.stacked_lora` stores them). One
:meth:`StackedAdamW.step` does, for every adapter k at once, what K separate ``torch.optim.AdamW``
(weight decay 0 by default) after ``clip_grad_norm_(adapter k's parameters, max_grad_norm)`` would do,
with per-adapter learning rates as a ``[K]`` tensor, per-adapter step counts, and a ``[K]`` mask of the
adapters that step now. A masked adapter (its stream has ended, or it is between gradient-accumulation
boundaries) is left exactly as it was: weights, moments and step count. Nothing is read back to the host.

The optimizer moves every parameter into one flat ``[K, N]`` buffer (each parameter becomes a view of
its columns, and so does its gradient): a step is about fifteen tensor operations whatever the number
of layers, where one set of operations per parameter would cost thousands of kernel launches a step
at full depth. Per-adapter norms are one row reduction; per-adapter scalars broadcast as ``[K, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# elements of the flat buffer updated at once: bounds a step's temporaries (measured at full 32B depth, K = 21, in
# one piece: the step's peak was 10.5 GiB above the weights and states, more than a forward and backward's 6.7 GiB)
CHUNK_ELEMENTS = 1 << 26


class StackedAdamW:
    def __init__(self, params: Sequence[torch.nn.Parameter], k: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0) -> None:
        self.params = list(params)
        if not self.params or any(p.shape[0] != k for p in self.params):
            raise ValueError(f"every parameter must stack {k} adapters along dim 0")
        if len({(p.dtype, p.device) for p in self.params}) != 1:
            raise ValueError("the stacked parameters must share one dtype and device")
        self.k, self.betas, self.eps, self.weight_decay, self.max_grad_norm = k, betas, eps, weight_decay, max_grad_norm
        first = self.params[0]
        sizes = [p[0].numel() for p in self.params]
        self.weights = torch.empty(k, sum(sizes), dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.weights)
        self.grad_views: list[torch.Tensor] = []
        start = 0
        with torch.no_grad():
            for p, n in zip(self.params, sizes):
                view = self.weights[:, start:start + n].view(p.shape)
                view.copy_(p)
                p.data = view  # the module's parameter now lives in the flat buffer
                self.grad_views.append(self.grads[:, start:start + n].view(p.shape))
                p.grad = self.grad_views[-1]  # backward accumulates into the flat gradient in place
                start += n
        self.steps = torch.zeros(k, dtype=torch.float64, device=first.device)
        self.exp_avg = torch.zeros_like(self.weights)
        self.exp_avg_sq = torch.zeros_like(self.weights)

    def _gather_grads(self) -> None:
        """Put back any gradient that is no longer a view of the flat buffer (set by hand, or after ``p.grad = None``)."""
        for p, view in zip(self.params, self.grad_views):
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
            p.grad = view

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """Each adapter's gradient norm over all its parameters ([K]; float64 for float64 weights, else float32)."""
        self._gather_grads()
        dtype = torch.float64 if self.grads.dtype == torch.float64 else torch.float32
        chunks = self._chunks(self.grads)
        if len(chunks) == 1:
            return torch.linalg.vector_norm(self.grads, dim=1, dtype=dtype)
        return torch.stack([torch.linalg.vector_norm(g, dim=1, dtype=dtype).square() for g in chunks]).sum(0).sqrt()

    def _chunks(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Column blocks of a flat ``[K, N]`` buffer: a step's temporaries are one block's size, not the buffer's."""
        return list(flat.split(max(1, CHUNK_ELEMENTS // self.k), dim=1))

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

        def per_adapter(v: torch.Tensor) -> torch.Tensor:
            return v.to(self.weights.dtype)[:, None]

        scale, bias2, step_size = per_adapter(coef), per_adapter(bias2_sqrt), per_adapter(lr / bias1)
        decay = per_adapter(1 - lr * self.weight_decay)
        blocks = zip(*(self._chunks(t) for t in (self.weights, self.exp_avg, self.exp_avg_sq, self.grads)))
        for p, m, v, grad in blocks:
            g = grad * scale
            if active is None:  # the common case: every adapter steps, all in place
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / bias2).add_(self.eps)
                if self.weight_decay:
                    p.mul_(decay)
                p.sub_(m / denom * step_size)
                continue
            on = active[:, None]
            m.copy_(torch.where(on, m.lerp(g, 1 - beta1), m))
            v.copy_(torch.where(on, v * beta2 + (1 - beta2) * g * g, v))
            denom = v.sqrt() / bias2 + self.eps
            update = m / denom * step_size
            decayed = p * decay
            p.copy_(torch.where(on, decayed - update, p))
        return norms

    @torch.no_grad()
    def zero_grad(self, stepped: torch.Tensor | None = None) -> None:
        """Clear the gradients of the adapters in ``stepped`` ([K] bool; default all); the others keep theirs
        (gradient accumulation between their boundaries). The gradients stay views of the flat buffer."""
        self._gather_grads()
        if stepped is None:
            self.grads.zero_()
        else:
            self.grads.mul_(~stepped[:, None])

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.clone(), "exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.copy_(state["steps"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
