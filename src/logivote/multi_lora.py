"""K LoRA adapters on one frozen base, trained together: row i of a batch passes only through adapter i.

peft trains one adapter per model (0.21 refuses ``adapter_names`` in training
mode: mixed-adapter batches are an inference feature there), so this module
does the one thing peft cannot: :class:`MultiLoraLinear` wraps a target linear
(float or GPTQ, whatever it is; it stays frozen) with K stacks of LoRA weights,
``A[k]: [r, in]`` and ``B[k]: [out, r]``, and computes

    y[i] = base(x[i]) + scale * dropout(x[i]) @ A[a_i]^T @ B[a_i]^T

for the adapters ``a`` active in this step, with one batched matmul per
target layer. Each adapter's weights are separate parameters, so an adapter
that sits a step out (its stream has ended) gets no gradient and no optimizer
step, and each can have its own optimizer and learning-rate schedule.

Adapters go out as standard peft folders (:func:`save_peft_adapter`:
``adapter_config.json`` + ``adapter_model.safetensors`` with peft's key names)
that ``PeftModel.from_pretrained`` and vLLM's ``--lora-modules`` load, and
come back in with :func:`load_peft_adapter`. Initialisation follows peft's
(A Kaiming-uniform, B zero) from a generator seeded per adapter, so adapter k
starts the same whatever else shares its job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LoraShape:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class Active:
    """Which adapters the rows of the current batch belong to (shared by every wrapped layer of a model)."""

    def __init__(self) -> None:
        self.ids: list[int] = []


class MultiLoraLinear(nn.Module):
    """A frozen linear plus K LoRA adapters; see the module docstring."""

    def __init__(self, base: nn.Module, k: int, shape: LoraShape, active: Active, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base = base
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.scale = shape.scale
        self.active = active
        self.dropout = nn.Dropout(shape.dropout) if shape.dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList(nn.Parameter(torch.zeros(shape.r, self.in_features, dtype=dtype, device=device)) for _ in range(k))
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(self.out_features, shape.r, dtype=dtype, device=device)) for _ in range(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.active.ids
        if len(ids) != x.shape[0]:
            raise RuntimeError(f"batch of {x.shape[0]} rows but {len(ids)} active adapters")
        out = self.base(x)
        a = torch.stack([self.lora_A[i] for i in ids])  # [n, r, in]
        b = torch.stack([self.lora_B[i] for i in ids])  # [n, out, r]
        h = self.dropout(x).to(a.dtype)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])  # [n, L, in]
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2)) * self.scale
        return out + delta.reshape(*out.shape[:-1], self.out_features).to(out.dtype)


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


class MultiLora:
    """K adapters attached to ``model``'s target linears; ``with lora.rows(ids): model(...)`` runs a batch."""

    def __init__(self, model: nn.Module, k: int, shape: LoraShape, seeds: Sequence[int], dtype: torch.dtype) -> None:
        if len(seeds) != k:
            raise ValueError(f"{k} adapters need {k} seeds, got {len(seeds)}")
        self.model, self.k, self.shape = model, k, shape
        self.active = Active()
        self.layers: dict[str, MultiLoraLinear] = {}
        targets = [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in shape.target_modules]
        if not targets:
            raise ValueError(f"no module named {list(shape.target_modules)} in the model")
        for name, module in targets:
            parent_name, child = name.rsplit(".", 1)
            device = next((t.device for t in [*module.parameters(), *module.buffers()]), torch.device("cpu"))
            wrapped = MultiLoraLinear(module, k, shape, self.active, dtype, device)
            setattr(model.get_submodule(parent_name), child, wrapped)
            self.layers[name] = wrapped
        for adapter, seed in enumerate(seeds):
            self._init(adapter, seed)

    def _init(self, adapter: int, seed: int) -> None:
        """peft's default: A Kaiming-uniform (a = sqrt(5)), B zero; A from a generator of (the adapter's seed, layer name)."""
        for name, layer in self.layers.items():
            generator = torch.Generator().manual_seed(_seed(seed, name))
            a = torch.empty(layer.lora_A[adapter].shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            with torch.no_grad():
                layer.lora_A[adapter].copy_(a)
                layer.lora_B[adapter].zero_()

    def parameters(self, adapter: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A[adapter], layer.lora_B[adapter])]

    def rows(self, ids: Sequence[int]) -> _Rows:
        return _Rows(self.active, list(ids))

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


class _Rows:
    def __init__(self, active: Active, ids: list[int]) -> None:
        self.active, self.ids = active, ids

    def __enter__(self) -> None:
        self.active.ids = self.ids

    def __exit__(self, *exc: object) -> None:
        self.active.ids = []


def peft_config(shape: LoraShape, base_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter_config.json`` peft writes for this LoRA (made by peft itself, so its fields stay peft's)."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=shape.r, lora_alpha=shape.alpha, lora_dropout=shape.dropout,
                        target_modules=list(shape.target_modules), base_model_name_or_path=str(base_dir))
    return json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def save_peft_adapter(lora: MultiLora, adapter: int, out_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> None:
    """Write adapter ``adapter`` as a standard peft adapter folder (caller makes it atomic)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(peft_config(lora.shape, base_dir), indent=2, sort_keys=True) + "\n")
    save_file(lora.state(adapter), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def load_peft_adapter(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a peft adapter folder, in :meth:`MultiLora.state`'s layout."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def iter_chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])
