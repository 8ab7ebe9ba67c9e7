"""The training settings (config ``train``), with their defaults, and what follows from them alone: the dtype,
each adapter's initial LoRA seed, the learning-rate schedule."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# selective checkpointing modes: how many wide matmuls of a layer keep their outputs (logivote.training.recompute)
SELECTIVE = {"selective": 0, "selective_gate": 1}

RECIPE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of the recipe; config key ``train`` maps onto these fields (config/README.md)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(RECIPE_TARGETS))
    max_len: int = 1800
    learning_rate: float = 1e-4
    epochs: float = 2.0
    batch_size: int = 1
    grad_accum: int = 1
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    seed: int = 42
    lora_init: str = "shared"  # shared: every adapter's A from ``seed``, as separate runs of one seed; per_adapter: from (seed, subset)
    save_steps: int = 50
    logging_steps: int = 10
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (bf16 where the GPU has it, else fp16) | float64 (checks)
    gradient_checkpointing: bool | str = False  # True: recompute whole layers in backward; "selective", "selective_gate": logivote.training.recompute
    threads: int = 1
    gpus: int = 0
    adapters_per_job: int = 1
    max_grad_norm: float = 1.0  # per adapter, as transformers' Trainer clips by default
    bucket_tokens: int = 1  # the packed stream's length is rounded up to a multiple of this (static shapes on GPUs)
    cuda_graphs: bool = False  # replay each stream shape's forward + backward from a CUDA graph (logivote.training.cuda_graphs)
    frozen_gemm: str = "auto"  # auto | bf16 | fp8: the frozen int4 base's GEMMs (logivote.training.fp8_frozen)

    def __post_init__(self) -> None:
        if self.gradient_checkpointing not in (True, False, *SELECTIVE):
            raise ValueError(f"train.gradient_checkpointing: true, false, selective or selective_gate, not {self.gradient_checkpointing!r}")
        if self.frozen_gemm not in ("auto", "bf16", "fp8"):
            raise ValueError(f"train.frozen_gemm: auto, bf16 or fp8, not {self.frozen_gemm!r}")
        if self.lora_init not in ("shared", "per_adapter"):
            raise ValueError(f"train.lora_init: shared or per_adapter, not {self.lora_init!r}")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> TrainSettings:
        """Settings from config ``train``; its scheduling keys (``mem_mb``) are not training knobs."""
        return cls(**{k: v for k, v in section.items() if k != "mem_mb"})


def resolve_dtype(name: str, on_gpu: bool) -> Any:
    import torch

    if name == "auto":
        if on_gpu and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # V100: no bf16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}[name]


def init_seeds(settings: TrainSettings, adapters: Sequence[int]) -> list[int]:
    """The seed of each adapter's initial ``A`` (``train.lora_init``): ``seed`` for all, or one per subset index, so that
    an adapter starts the same whichever job (and whichever K) trains it."""
    if settings.lora_init == "shared":
        return [settings.seed] * len(adapters)
    from .stacked_lora import derived_seed

    return [derived_seed(settings.seed, str(k)) for k in adapters]


@functools.cache
def lr_factors(scheduler: str, warmup_steps: int, optimizer_steps: int) -> tuple[float, ...]:
    """The learning rate's multiplier before optimizer step n = 0 … ``optimizer_steps``: transformers'
    ``get_scheduler`` (the Trainer's schedules), stepped on a stand-in optimizer."""
    import torch
    from transformers import get_scheduler

    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(scheduler, stand_in, num_warmup_steps=warmup_steps, num_training_steps=optimizer_steps)
    factors = []
    for _ in range(optimizer_steps + 1):
        factors.append(float(schedule.get_last_lr()[0]))
        stand_in.step()
        schedule.step()
    return tuple(factors)
