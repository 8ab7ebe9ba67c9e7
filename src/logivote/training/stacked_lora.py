"""K LoRA adapters on one frozen base, trained together over a packed token stream (issue 19, point 2).

peft trains one adapter per model (0.21 refuses ``adapter_names`` in training mode: mixed-adapter
batches are an inference feature there), so this module does the one thing peft cannot.
:class:`StackedLoraLinear` wraps a target linear (float or GPTQ, whatever it is; it stays frozen) and
holds every adapter's weights stacked in one parameter each, ``A: [K, r, in]`` and ``B: [K, out, r]``.
For tokens ``x: [..., T, in]`` whose adapters are ``a: [T]`` (-1: none, e.g. a bucket tail) it computes::

    s = dropout(x) @ A_all^T            # A_all = A viewed as [K·r, in]: every adapter's r columns
    s = s * scale * onehot(a)            # keep each token's own adapter's r columns, zero the rest
    y = base(x) + s @ B_all^T            # B_all = B laid out as [out, K·r]; one addmm

two dense GEMMs per layer, no per-adapter loop and no stacking of K parameters every step; autograd
gives each adapter exactly the gradient of its own tokens, and an adapter with no tokens in a step a
zero gradient (:class:`logivote.training.stacked_adamw.StackedAdamW` then leaves it untouched).

Those GEMMs are K times as wide as one adapter needs (``K·r`` columns). Where the stream's tokens come in
runs, one per adapter in adapter order (as :func:`logivote.training.packing.pack` lays out a step), a grouped GEMM
does only each run's own ``r`` columns: ``s = grouped_mm(dropout(x), A^T, ends) * scale``, ``y = base(x) +
grouped_mm(s, B^T, ends)``, with ``ends`` each adapter's last token (the bucket tail joins the last run: its
tokens feed no loss, so they add nothing to any gradient). That is the path on Hopper GPUs in bf16 and on the CPU
in float32 (:data:`LORA_GEMM` "auto": the 2-core default's training jobs 15 % faster than one-hot, issue 42); the
one-hot path everywhere else (older GPUs, and torch before 2.10, which has no public grouped_mm).
:class:`TokenAdapters` carries ``a`` to every wrapped layer of a model; :class:`StackedLora` wraps a
model's target linears and initialises each adapter as peft does (A Kaiming-uniform, B zero) from a
generator seeded per (adapter seed, layer name), so adapter k starts the same whatever shares its job.

Adapters go out as standard peft folders (:func:`save_peft_adapter`: ``adapter_config.json`` +
``adapter_model.safetensors`` with peft's key names) that ``PeftModel.from_pretrained`` and vLLM's
``--lora-modules`` load, and come back in with :func:`load_peft_adapter`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .frozen_gptq import frozen_forward
from .packing import cuda_capability


@dataclass(frozen=True)
class LoraShape:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


# "auto": grouped GEMMs on CUDA devices of compute capability 9.0+ in bf16 and on the CPU in float32, else one-hot;
# "grouped": wherever torch's grouped_mm runs; "onehot": never grouped
LORA_GEMM = "auto"


def _grouped_mm() -> Any:
    # the public one (torch 2.10+): torch 2.8's private _grouped_mm has no CPU kernel and no fallback below Hopper
    return getattr(torch.nn.functional, "grouped_mm", None)


def _use_grouped(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...]) -> bool:
    """``sizes``: the layer's r, in and out features; on CUDA the grouped GEMM needs every row of its operands to
    start at a multiple of 16 bytes (r = 4 in bf16 does not: "strides should be multiple of 16 bytes")."""
    if LORA_GEMM == "onehot" or _grouped_mm() is None:
        return False
    if device.type == "cuda" and any(n * dtype.itemsize % 16 for n in sizes):
        return False
    if LORA_GEMM == "grouped":
        return True
    if device.type == "cpu":
        return dtype == torch.float32  # measured: one training job of the 2-core default, 18 s against 21 s an epoch
    return device.type == "cuda" and dtype == torch.bfloat16 and cuda_capability(device) >= (9, 0)


# a decoder layer's last linear: its output only joins the residual stream, nothing in the layer saves it, so a
# non-reentrant checkpoint's recompute (which stops at the last tensor the backward needs) ends before its GEMM
# when the adapters run first (the grouped path); keeping its dequantized weight would force that GEMM to run
RECOMPUTE_STOPS_BEFORE = ("down_proj",)


class TokenAdapters:
    """The adapter of every token of the current stream ([T] long, -1 for none), or one adapter for all tokens."""

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None
        self.single: int | None = None
        self.k = 0
        self._onehot: dict[tuple[torch.dtype, float], torch.Tensor] = {}
        # [K] int32 on the device: the stream position after each adapter's run (the last one at T;
        # logivote.training.packing.adapter_ends), or None where the tokens do not come in one run per adapter in adapter order
        self.ends: torch.Tensor | None = None

    def set(self, ids: torch.Tensor | None, k: int, single: int | None = None, ends: torch.Tensor | None = None) -> None:
        self.ids, self.k, self.single, self._onehot, self.ends = ids, k, single, {}, ends

    def onehot(self, dtype: torch.dtype, scale: float) -> torch.Tensor:
        """[T, K, 1]: ``scale`` where a token belongs to an adapter, else 0 (built once per step, shared by every layer)."""
        if self.ids is None:
            raise RuntimeError("no token adapters set for this step")
        key = (dtype, scale)
        if key not in self._onehot:
            self._onehot[key] = ((self.ids[:, None] == torch.arange(self.k, device=self.ids.device)).to(dtype) * scale).unsqueeze(-1)
        return self._onehot[key]


class StackedLoraLinear(nn.Module):
    """A frozen linear plus K stacked LoRA adapters applied per token; see the module docstring."""

    def __init__(self, base: nn.Module, k: int, r: int, scale: float, dropout: float, tokens: TokenAdapters,
                 dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = int(base.in_features), int(base.out_features)
        self.k, self.r, self.scale = k, r, scale
        self.tokens = tokens
        self.keep_weight = False  # see StackedLora's keep_dequantized
        self.fp8 = False  # the frozen GEMMs in FP8 (train.frozen_gemm; StackedLora.use_fp8)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.zeros(k, r, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(k, self.out_features, r, dtype=dtype, device=device))

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        # on a GPU a GPTQ base keeps no dequantized weight for the backward; on CPU memory is not the limit, and the
        # second dequantization in backward would cost the 2-core default 5 % of its training time (measured)
        return frozen_forward(self.base, x, self.keep_weight, fp8=self.fp8) if x.is_cuda else self.base(x)

    def _check_tokens(self, tokens: int) -> None:
        if self.tokens.ids is None or tokens != self.tokens.ids.shape[0]:
            n = None if self.tokens.ids is None else self.tokens.ids.shape[0]
            raise RuntimeError(f"{tokens} tokens but {n} token adapters")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens.single is None and _use_grouped(x.device, self.lora_A.dtype, (self.r, self.in_features, self.out_features)):
            if (ends := self.tokens.ends) is not None:
                return self._grouped(x, ends)
        # the base first, then the adapters: the order of autograd's gradient sums the learning figures were measured with
        out = self._base(x)
        h = self.dropout(x).to(self.lora_A.dtype).reshape(-1, self.in_features)  # [T, in]
        if self.tokens.single is not None:  # one adapter for every token (checks, inference)
            i = self.tokens.single
            delta = (h @ self.lora_A[i].t()) @ self.lora_B[i].t() * self.scale
            return out + delta.reshape(out.shape).to(out.dtype)
        self._check_tokens(h.shape[0])
        s = h @ self.lora_A.reshape(self.k * self.r, self.in_features).t()  # [T, K·r]
        s = (s.view(-1, self.k, self.r) * self.tokens.onehot(s.dtype, self.scale)).view(-1, self.k * self.r)
        b_all = self.lora_B.permute(1, 0, 2).reshape(self.out_features, self.k * self.r)  # [out, K·r]
        flat = out.reshape(-1, self.out_features)
        if flat.dtype == s.dtype:
            return torch.addmm(flat, s, b_all.t()).view(out.shape)  # the add fused into the GEMM
        return out + (s @ b_all.t()).view(out.shape).to(out.dtype)

    def _grouped(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x).to(self.lora_A.dtype).reshape(-1, self.in_features)  # [T, in]
        self._check_tokens(h.shape[0])
        grouped_mm = _grouped_mm()
        s = grouped_mm(h, self.lora_A.transpose(1, 2), offs=ends) * self.scale  # [T, r]: each token's own adapter
        delta = grouped_mm(s, self.lora_B.transpose(1, 2), offs=ends)  # [T, out]
        # the base after the adapters, saving no tensor, the adapters' output added in its GEMM: where this linear's
        # output only joins the residual stream (down_proj), a checkpoint's recompute stops once the adapters have
        # saved what their backward needs, before this GEMM
        # on the CPU the dequantized weight stays for the backward, as in _base
        return frozen_forward(self.base, x, self.keep_weight or not x.is_cuda, addend=delta.to(x.dtype), fp8=self.fp8)


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit seed for ``name`` under ``seed``, the same on every machine (sha256 of ``"seed:name"``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


class StackedLora:
    """K adapters attached to ``model``'s target linears; ``with lora.tokens(ids):`` runs a packed stream through them."""

    def __init__(self, model: nn.Module, k: int, shape: LoraShape, seeds: Sequence[int], dtype: torch.dtype,
                 keep_dequantized: bool = False) -> None:
        """``keep_dequantized``: the model's decoder layers are checkpointed, so a GPTQ base's dequantized weights
        may be kept from a layer's recompute to its backward (:func:`logivote.training.frozen_gptq.frozen_forward`); not
        those of :data:`RECOMPUTE_STOPS_BEFORE`, whose GEMM the recompute would otherwise have to run again."""
        if len(seeds) != k:
            raise ValueError(f"{k} adapters need {k} seeds, got {len(seeds)}")
        self.model, self.k, self.shape = model, k, shape
        self.token_adapters = TokenAdapters()
        self.layers: dict[str, StackedLoraLinear] = {}
        targets = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in shape.target_modules]
        if not targets:
            raise ValueError(f"no module named {list(shape.target_modules)} in the model")
        for name, module in targets:
            parent_name, child = name.rsplit(".", 1)
            device = next((t.device for t in [*module.parameters(), *module.buffers()]), torch.device("cpu"))
            wrapped = StackedLoraLinear(module, k, shape.r, shape.scale, shape.dropout, self.token_adapters, dtype, device)
            wrapped.keep_weight = keep_dequantized and child not in RECOMPUTE_STOPS_BEFORE
            setattr(model.get_submodule(parent_name), child, wrapped)
            self.layers[name] = wrapped
        for adapter, seed in enumerate(seeds):
            self._init(adapter, seed)

    def _init(self, adapter: int, seed: int) -> None:
        """peft's default: A Kaiming-uniform (a = sqrt(5)), B zero; A from a generator of (the adapter's seed, layer name)."""
        for name, layer in self.layers.items():
            generator = torch.Generator().manual_seed(derived_seed(seed, name))
            a = torch.empty(layer.lora_A.shape[1:], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            with torch.no_grad():
                layer.lora_A[adapter].copy_(a)
                layer.lora_B[adapter].zero_()

    def use_fp8(self) -> tuple[int, int]:
        """Run the frozen GEMMs of every wrapped linear that supports it in FP8 (:mod:`logivote.training.fp8_frozen`),
        their weight scales computed now; returns (linears in FP8, linears wrapped)."""
        from . import fp8_frozen

        chosen = [layer for layer in self.layers.values() if fp8_frozen.supports(layer.base)]
        fp8_frozen.prepare([layer.base for layer in chosen])
        for layer in chosen:
            layer.fp8 = True
        return len(chosen), len(self.layers)

    def parameters(self) -> list[nn.Parameter]:
        """Every layer's stacked ``A`` and ``B`` (dim 0: the adapter)."""
        return [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]

    @contextmanager
    def tokens(self, ids: torch.Tensor, ends: torch.Tensor | None = None) -> Iterator[None]:
        """Token t of the stream goes through adapter ``ids[t]`` (-1: none); keep it open through the backward
        (gradient checkpointing reruns the forward there). ``ends``: where each adapter's run ends, on the device
        (:attr:`logivote.training.packing.PackedBatch.adapter_ends`), which lets the grouped GEMMs run (module docstring)."""
        self.token_adapters.set(ids, self.k, ends=ends)
        try:
            yield
        finally:
            self.token_adapters.set(None, self.k)

    @contextmanager
    def adapter(self, i: int) -> Iterator[None]:
        """Every token through adapter ``i`` (a plain forward, any batch shape)."""
        self.token_adapters.set(None, self.k, single=i)
        try:
            yield
        finally:
            self.token_adapters.set(None, self.k)

    def state(self, adapter: int) -> dict[str, torch.Tensor]:
        """Adapter ``adapter`` in peft's key layout (``base_model.model.<module>.lora_{A,B}.weight``)."""
        out = {}
        for name, layer in self.layers.items():
            out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[adapter].detach().to("cpu", torch.float32).contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[adapter].detach().to("cpu", torch.float32).contiguous()
        return out

    def load_state(self, adapter: int, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.lora_A[adapter].copy_(tensors[f"base_model.model.{name}.lora_A.weight"])
                layer.lora_B[adapter].copy_(tensors[f"base_model.model.{name}.lora_B.weight"])


def peft_config(shape: LoraShape, base_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` peft writes for this LoRA (made by peft itself, so its fields stay peft's)."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=shape.r, lora_alpha=shape.alpha, lora_dropout=shape.dropout,
                        target_modules=list(shape.target_modules), base_model_name_or_path=str(base_dir))
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_peft_adapter(lora: StackedLora, adapter: int, out_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> None:
    """Write adapter ``adapter`` as a standard peft adapter folder (caller makes it atomic)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(peft_config(lora.shape, base_dir), indent=2, sort_keys=True) + "\n")
    save_file(lora.state(adapter), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def load_peft_adapter(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a peft adapter folder, in :meth:`StackedLora.state`'s layout."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))
