"""K LoRA adapters over a packed token stream as two dense GEMMs per layer (issue 19, point 2).

Each wrapped linear holds every adapter's weights stacked in one parameter each, ``A: [K, r, in]`` and
``B: [K, out, r]``, and computes, for tokens ``x: [..., T, in]`` whose adapters are ``a: [T]`` (-1: none)::

    s = dropout(x) @ A_all^T            # A_all = A viewed as [K·r, in]: every adapter's r columns
    s = s * onehot(a)                    # keep each token's own adapter's r columns, zero the rest
    y = base(x) + scale * s @ B_all^T    # B_all = B laid out as [out, K·r]

so autograd gives each adapter exactly the gradient of its own tokens, with no per-adapter loop and
no stacking of K parameters every step. An adapter with no tokens in a step gets a zero gradient (the
optimizer over stacked adapters masks it). :class:`TokenAdapters` carries ``a`` to every wrapped layer
of a model, like ``multi_lora.Active`` carries the rows' adapters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TokenAdapters:
    """The adapter of every token of the current packed stream ([T] long, -1 for none)."""

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None
        self.k = 0
        self._onehot: torch.Tensor | None = None

    def set(self, ids: torch.Tensor, k: int) -> None:
        self.ids, self.k, self._onehot = ids, k, None

    def onehot(self, dtype: torch.dtype) -> torch.Tensor:
        """[T, K, 1]: 1 where a token belongs to an adapter (built once per step, shared by every layer)."""
        if self.ids is None:
            raise RuntimeError("no token adapters set for this step")
        if self._onehot is None or self._onehot.dtype != dtype:
            self._onehot = (self.ids[:, None] == torch.arange(self.k, device=self.ids.device)).to(dtype).unsqueeze(-1)
        return self._onehot


class StackedLoraLinear(nn.Module):
    """A frozen linear plus K stacked LoRA adapters applied per token; see the module docstring."""

    def __init__(self, base: nn.Module, k: int, r: int, scale: float, dropout: float, tokens: TokenAdapters,
                 dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = int(base.in_features), int(base.out_features)
        self.k, self.r, self.scale = k, r, scale
        self.tokens = tokens
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.zeros(k, r, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(k, self.out_features, r, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = self.dropout(x).to(self.lora_A.dtype).reshape(-1, self.in_features)  # [T, in]
        if h.shape[0] != self.tokens.ids.shape[0]:
            raise RuntimeError(f"{h.shape[0]} tokens but {self.tokens.ids.shape[0]} token adapters")
        s = h @ self.lora_A.reshape(self.k * self.r, self.in_features).t()  # [T, K·r]
        s = (s.view(-1, self.k, self.r) * self.tokens.onehot(s.dtype)).view(-1, self.k * self.r)
        b_all = self.lora_B.permute(1, 0, 2).reshape(self.out_features, self.k * self.r)  # [out, K·r]
        delta = (s @ b_all.t()) * self.scale
        return out + delta.reshape(out.shape).to(out.dtype)
