"""Step 3: one LoRA adapter per bag, with transformers' Trainer and peft.

:func:`train_adapter` trains on ``results/subsets/{k}.jsonl`` and writes a
standard peft adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` and vLLM's
``--lora-modules`` both load.

Crash safety: checkpoints go to ``checkpoint_dir`` every ``save_steps``
optimizer steps (model, optimizer, scheduler and RNG states, via the Trainer).
A rerun resumes from the newest one, provided its fingerprint (settings, data,
base model) matches; a stale checkpoint folder is wiped. On CPU a resumed run
ends with the same adapter as an uninterrupted one (``tests/test_train.py``).
The adapter appears under its final name only when complete; the checkpoints
are then removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .flatten import read_questions
from .jsonl import atomic_directory, sha256_file
from .prompt import encode_example

log = logging.getLogger(__name__)

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
    save_steps: int = 50
    logging_steps: int = 10
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (bf16 where the GPU has it, else fp16)
    gradient_checkpointing: bool = False
    threads: int = 1
    gpus: int = 0

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
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def fingerprint(settings: TrainSettings, subset_path: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> str:
    """What a checkpoint must match to be resumed (threads/gpus excluded: they do not change the math)."""
    knobs = {k: v for k, v in asdict(settings).items() if k not in ("threads", "gpus", "logging_steps")}
    base_config = Path(base_dir) / "config.json"
    payload = {
        "settings": knobs,
        "subset": sha256_file(subset_path),
        "base": sha256_file(base_config) if base_config.exists() else str(base_dir),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _prepare_checkpoints(checkpoint_dir: Path, print_: str) -> str | None:
    """Wipe a checkpoint folder of another fingerprint; return the newest checkpoint to resume, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = checkpoint_dir / "fingerprint.txt"
    if checkpoint_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != print_):
        log.warning("checkpoints in %s are from other settings or data: starting over", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(print_ + "\n")
    while (last := get_last_checkpoint(str(checkpoint_dir))) is not None:
        if (Path(last) / "trainer_state.json").exists():
            log.info("resuming from %s", last)
            return last
        log.warning("checkpoint %s is incomplete (killed while saving): removing it", last)
        shutil.rmtree(last)
    return None


def load_base(base_dir: str | os.PathLike[str], dtype: Any, on_gpu: bool) -> tuple[Any, Any]:
    """Tokenizer and base model (GPTQ checkpoints load through transformers + gptqmodel)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if on_gpu:
        kwargs["device_map"] = "auto"  # spreads the layers over every visible GPU
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    return tokenizer, model


def train_adapter(
    base_dir: str | os.PathLike[str],
    subset_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    settings: TrainSettings,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Train one adapter; return the trained peft model (in memory, for checks).

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (benchmarks use them).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    torch.set_num_threads(settings.threads)
    set_seed(settings.seed)
    on_gpu = settings.gpus > 0 and torch.cuda.is_available()
    dtype = resolve_dtype(settings.dtype, on_gpu)
    tokenizer, model = load_base(base_dir, dtype, on_gpu)

    questions = read_questions(subset_path)
    examples = [e for e in (encode_example(tokenizer, q, settings.max_len) for q in questions) if e is not None]
    if len(examples) < len(questions):
        log.warning("%d of %d questions are longer than max_len=%d tokens and are left out", len(questions) - len(examples), len(questions), settings.max_len)
    if not examples:
        raise ValueError(f"{subset_path}: no question fits in max_len={settings.max_len} tokens")
    lengths = [len(e["input_ids"]) for e in examples]
    log.info("%d training examples, %d-%d tokens (mean %.0f)", len(examples), min(lengths), max(lengths), sum(lengths) / len(lengths))

    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
    ))
    if on_gpu:
        devices = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        log.info("CUDA_VISIBLE_DEVICES=%s: %s", os.environ.get("CUDA_VISIBLE_DEVICES"),
                 ", ".join(f"cuda:{i} {d.name} GPU-{d.uuid}" for i, d in enumerate(devices)))
        log.info("model placement: %s", sorted({str(p.device) for p in model.parameters()}))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d trainable of %d parameters (%.3f %%)", trainable, total, 100 * trainable / total)

    ckpt = Path(checkpoint_dir)
    resume = _prepare_checkpoints(ckpt, fingerprint(settings, subset_path, base_dir))
    args = TrainingArguments(
        output_dir=str(ckpt),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_steps,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not on_gpu,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
        callbacks=list(callbacks),
    )
    result = trainer.train(resume_from_checkpoint=resume)
    log.info("training done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()})

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        (tmp / "logivote_train.json").write_text(json.dumps(
            {"settings": asdict(settings), "examples": len(examples), "metrics": result.metrics}, indent=1, default=str) + "\n")
    shutil.rmtree(ckpt, ignore_errors=True)
    log.info("adapter written to %s", out_dir)
    return model


def train_lora_job(
    base_dir: str,
    subset_path: str,
    out_dir: str,
    checkpoint_dir: str,
    section: dict[str, Any],
    threads: int,
    gpus: int,
) -> None:
    """The ``train_lora`` rule: hold ``gpus`` GPUs of our own, then train (settings from config ``train``)."""
    from dataclasses import replace

    from .gpus import gpu_slots

    settings = replace(TrainSettings.from_config(section), threads=threads, gpus=gpus)
    with gpu_slots(gpus):
        train_adapter(base_dir, subset_path, out_dir, checkpoint_dir, settings)
