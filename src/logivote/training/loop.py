"""The training loop: K LoRA adapters in one job over one base model in memory (``train.adapters_per_job``).

:func:`train_adapters` loads the base once and trains K adapters together.
Each step takes the next example of each adapter's own stream (its subset, in
its own seeded order, for its own epochs); the four units of a step are:

- :mod:`logivote.training.packing`: the step's rows end to end in one token stream, no
  padding, each row with its own positions and attention only within itself;
  logits only at the labelled positions (the answer letter and end-of-turn);
- :mod:`logivote.training.stacked_lora`: every adapter's LoRA weights stacked in one
  ``A`` and one ``B`` per layer, applied per token as two dense GEMMs, so each
  adapter's gradient is that of its own example;
- :mod:`logivote.training.stacked_adamw`: one AdamW step for all adapters, with each
  adapter's own moments, step count, gradient clipping and learning rate (a
  ``[K]`` tensor from its schedule, :func:`logivote.training.settings.lr_factors`);
- this loop, which reads the losses back only every ``logging_steps``.

Batch-1 semantics per adapter, one stream of K rows for the hardware. An
adapter whose stream has ended drops out of the stream and is masked out of
the optimizer step, as is one between gradient-accumulation boundaries.
K = 1 runs the same code.

Each adapter is written as a standard peft folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained`` and vLLM's
``--lora-modules`` load, under its final name only when complete, with its
``loss_curve.tsv`` and ``logivote_train.json`` (:mod:`logivote.data.contracts`).
Checkpoints and resume: :mod:`logivote.training.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..base.quantize import gptq_load_kwargs
from ..data.contracts import LOSS_CURVE, write_loss_curve
from ..data.flatten import read_questions
from ..data.jsonl import atomic_directory
from ..data.prompt import encode_example
from .checkpoints import fingerprint, prepare_checkpoints, resume, save_checkpoint
from .recompute import keep_matmuls
from .settings import SELECTIVE, TrainSettings, init_seeds, lr_factors, resolve_dtype

log = logging.getLogger(__name__)


def use_expandable_segments() -> None:
    """Let PyTorch's CUDA allocator grow segments in place (``expandable_segments``) unless the user configured it.

    A step allocates and frees tensors of a new size every step (packed streams, one layer's dequantized
    weights); with fixed segments the allocator then frees and maps device memory again, which waits for the
    device. Measured on an H100 at full 32B depth, one adapter per job: 1 020 ms a step before, 776 ms after;
    21 adapters: unchanged (resources/benchmarks/README.md). Read when the allocator starts, so call this before the first CUDA
    allocation of the process."""
    import torch

    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        log.warning("CUDA already in use: expandable_segments not set (set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)")
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def load_base(base_dir: str | os.PathLike[str], dtype: Any, on_gpu: bool) -> tuple[Any, Any]:
    """Tokenizer and base model (GPTQ checkpoints load through transformers + gptqmodel)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    kwargs: dict[str, Any] = {"dtype": dtype, **gptq_load_kwargs(base_dir)}
    if on_gpu:
        kwargs["device_map"] = "auto"  # spreads the layers over every visible GPU
    elif "quantization_config" in kwargs:
        kwargs["device_map"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    return tokenizer, model


def base_memory(model: Any) -> dict[str, Any]:
    """Bytes held by the frozen base (parameters and buffers, LoRA excluded), by dtype: int4 GPTQ weights show as int32."""
    by_dtype: dict[str, int] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" in name:
            continue
        key = str(tensor.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + tensor.numel() * tensor.element_size()
    kernels = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "qweight")})
    return {"bytes": sum(by_dtype.values()), "by_dtype": by_dtype, "quantized_kernels": kernels}


def adapter_stream(n_examples: int, epochs: float, seed: int, adapter: int) -> list[int]:
    """Adapter ``adapter``'s example order: a fresh seeded shuffle per epoch, cut at ``n × epochs`` examples."""
    total = math.ceil(n_examples * epochs)
    order: list[int] = []
    epoch = 0
    while len(order) < total:
        perm = list(range(n_examples))
        random.Random(f"{seed}:{adapter}:{epoch}").shuffle(perm)
        order += perm
        epoch += 1
    return order[:total]


def encode_subset(tokenizer: Any, subset_path: str | os.PathLike[str], max_len: int) -> list[dict[str, list[int]]]:
    questions = read_questions(subset_path)
    examples = [e for e in (encode_example(tokenizer, q, max_len) for q in questions) if e is not None]
    if len(examples) < len(questions):
        log.warning("%s: %d of %d questions are longer than max_len=%d tokens and are left out",
                    subset_path, len(questions) - len(examples), len(questions), max_len)
    if not examples:
        raise ValueError(f"{subset_path}: no question fits in max_len={max_len} tokens")
    return examples


@dataclass(frozen=True)
class StepStats:
    """What one step did, for progress, logs and benchmarks; ``losses`` reads the device (a sync), so read it only when needed."""

    step: int
    total_steps: int
    adapters: tuple[int, ...]  # the adapters in this step
    row_loss: Any  # [len(adapters)] tensor on the device: each adapter's loss on its example
    real_tokens: int
    padded_tokens: int  # the bucket's tail

    @property
    def losses(self) -> dict[int, float]:
        return dict(zip(self.adapters, self.row_loss.tolist()))


def loss_curve(adapter: int, losses: Sequence[float], logging_steps: int, grad_accum: int, base_lr: float,
               lr_factors: Sequence[float]) -> list[tuple[int, int, float, float]]:
    """The rows of ``loss_curve.tsv`` (contracts): one per logged step (every ``logging_steps`` and the last),
    the mean loss since the previous row, and the learning rate in effect at that step (``lr_factors[n]``:
    the schedule's multiplier after n optimizer steps, :func:`logivote.training.settings.lr_factors`)."""
    rows = []
    start = 0
    for step in range(1, len(losses) + 1):
        if step % logging_steps == 0 or step == len(losses):
            window = losses[start:step]
            rows.append((adapter, step, sum(window) / len(window), base_lr * lr_factors[(step - 1) // grad_accum]))
            start = step
    return rows


class _LossLog:
    """Each adapter's per-step losses, read from the device only every ``logging_steps`` (and before a checkpoint)."""

    def __init__(self, adapters: Sequence[int], losses: list[list[float]], learning_rate: float) -> None:
        self.adapters, self.losses, self.learning_rate = list(adapters), losses, learning_rate
        self.pending: list[tuple[int, list[int], Any]] = []  # (step, active adapter indices, [R] losses on the device)

    def add(self, step: int, active: list[int], row_loss: Any) -> None:
        self.pending.append((step, active, row_loss.detach()))

    def flush(self, total_steps: int) -> None:
        import torch

        if not self.pending:
            return
        values = iter(torch.cat([loss for _, _, loss in self.pending]).tolist())  # one device sync
        for step, active, _ in self.pending:
            for i in active:
                loss = next(values)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"adapter {self.adapters[i]}: training loss is {loss} at step {step + 1} of {total_steps} "
                        f"(learning rate {self.learning_rate:g}): it diverged and its weights would be NaN. "
                        "Lower train.learning_rate (the recipe's is 1e-4) and rerun; the job's earlier checkpoints are kept")
                self.losses[i].append(loss)
        self.pending.clear()

    def recent(self, n: int) -> dict[int, float]:
        return {self.adapters[i]: sum(x[-n:]) / len(x[-n:]) for i, x in enumerate(self.losses) if x}


@dataclass
class _Job:
    """One training job's state once set up: the settings as resolved (``frozen_gemm`` is the path taken), the model
    with its stacked LoRA, and each adapter's examples and stream."""

    settings: TrainSettings
    adapters: list[int]
    tokenizer: Any
    model: Any
    lora: Any
    dtype: Any
    examples: list[list[dict[str, list[int]]]]
    streams: list[list[int]]
    frozen_gemm: dict[str, Any]


def train_adapters(
    base_dir: str | os.PathLike[str],
    subsets: Mapping[int, str | os.PathLike[str]],
    out_dirs: Mapping[int, str | os.PathLike[str]],
    checkpoint_dir: str | os.PathLike[str],
    settings: TrainSettings,
    on_step: Callable[[StepStats], None] | None = None,
) -> Any:
    """Train one adapter per subset (adapter number -> subset file) in one job; return the :class:`StackedLora` (for checks).

    ``on_step`` is called after every step (benchmarks time the loop with it).
    """
    from .stacked_adamw import StackedAdamW

    job = _set_up(base_dir, subsets, settings)
    settings = job.settings
    optimizer = StackedAdamW(job.lora.parameters(), len(job.adapters), betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                             max_grad_norm=settings.max_grad_norm)
    schedules = [lr_factors(settings.lr_scheduler, settings.warmup_steps, math.ceil(len(s) / settings.grad_accum)) for s in job.streams]
    losses: list[list[float]] = [[] for _ in job.adapters]
    ckpt = Path(checkpoint_dir)
    start = 0
    if (found := prepare_checkpoints(ckpt, fingerprint(settings, subsets, base_dir))) is not None:
        start, losses = resume(found, job.lora, optimizer)
    _run(job, optimizer, schedules, losses, start, ckpt, on_step)
    for i, k in enumerate(job.adapters):
        _write_adapter(job, i, losses[i], schedules[i], base_dir, out_dirs[k])
    shutil.rmtree(ckpt, ignore_errors=True)
    return job.lora


def _set_up(base_dir: str | os.PathLike[str], subsets: Mapping[int, str | os.PathLike[str]], settings: TrainSettings) -> _Job:
    """Seed, load the base once, encode every adapter's subset and stream, and stack the K adapters' LoRA over it."""
    import torch

    from .fused import fuse_elementwise
    from .packing import use_packed_attention
    from .stacked_lora import LoraShape, StackedLora

    if settings.batch_size != 1:
        raise ValueError(f"train.batch_size {settings.batch_size}: each adapter trains on one example per step (the recipe's "
                         "batch size 1); use grad_accum for larger effective batches")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    on_gpu = settings.gpus > 0 and torch.cuda.is_available()
    if on_gpu:
        use_expandable_segments()
    dtype = resolve_dtype(settings.dtype, on_gpu)
    tokenizer, model = load_base(base_dir, dtype, on_gpu)
    model.requires_grad_(False)
    model.config.use_cache = False
    use_packed_attention(model)
    if any((fused := fuse_elementwise(model)).values()):
        log.info("fused elementwise steps: %s", fused)
    adapters = sorted(subsets)
    examples = [encode_subset(tokenizer, subsets[k], settings.max_len) for k in adapters]
    streams = [adapter_stream(len(ex), settings.epochs, settings.seed, k) for ex, k in zip(examples, adapters)]
    for k, ex in zip(adapters, examples):
        lengths = [len(e["input_ids"]) for e in ex]
        log.info("adapter %d: %d training examples, %d-%d tokens (mean %.0f)", k, len(ex), min(lengths), max(lengths), sum(lengths) / len(lengths))

    if settings.gradient_checkpointing:
        checkpoint_kwargs: dict[str, Any] = {"use_reentrant": False}
        if settings.gradient_checkpointing in SELECTIVE:
            checkpoint_kwargs["context_fn"] = keep_matmuls(model.config.hidden_size, wide=SELECTIVE[settings.gradient_checkpointing])
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
    shape = LoraShape(settings.lora_r, settings.lora_alpha, settings.lora_dropout, tuple(settings.target_modules))
    lora = StackedLora(model, len(adapters), shape, seeds=init_seeds(settings, adapters), dtype=dtype,
                       keep_dequantized=bool(settings.gradient_checkpointing))
    frozen_gemm = _choose_frozen_gemm(settings.frozen_gemm, lora, model.get_input_embeddings().weight.device)
    settings = replace(settings, frozen_gemm=frozen_gemm["path"])  # the path taken: a checkpoint resumes only on the same
    model.train()
    _log_setup(model, lora, adapters, on_gpu)
    return _Job(settings, adapters, tokenizer, model, lora, dtype, examples, streams, frozen_gemm)


def _run(job: _Job, optimizer: Any, schedules: Sequence[Sequence[float]], losses: list[list[float]], start: int,
         ckpt: Path, on_step: Callable[[StepStats], None] | None) -> None:
    """Steps ``start`` … the longest stream's end: pack, forward and backward, the optimizer step of the adapters whose
    window ends, the losses read back every ``logging_steps``, a checkpoint every ``save_steps``."""
    from tqdm import tqdm

    from .cuda_graphs import StepGraphs, graphed
    from .packing import pack

    settings, adapters, streams, examples = job.settings, job.adapters, job.streams, job.examples
    device = job.model.get_input_embeddings().weight.device
    pad_id = job.tokenizer.pad_token_id if job.tokenizer.pad_token_id is not None else 0
    total_steps = max(len(s) for s in streams)
    loss_log = _LossLog(adapters, losses, settings.learning_rate)
    forward_backward = _forward_backward(job)
    step_fn = graphed(forward_backward, {p.device for p in job.model.parameters()}, job.dtype) if settings.cuda_graphs else forward_backward
    real = padded = 0
    began = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start, desc=f"train adapters {adapters[0]}-{adapters[-1]}", unit="step", mininterval=1.0)
    for step in range(start, total_steps):
        active = [i for i, stream in enumerate(streams) if step < len(stream)]
        batch = pack([examples[i][streams[i][step]] for i in active], pad_id, device, settings.bucket_tokens,
                     adapters=active, k=len(adapters))
        row_loss = step_fn(batch)
        loss_log.add(step, active, row_loss)
        stepping = [i for i in active if (step + 1) % settings.grad_accum == 0 or step + 1 == len(streams[i])]
        if stepping:
            _optimizer_step(optimizer, stepping, schedules, step // settings.grad_accum, settings.learning_rate, device)
        real, padded = real + batch.real_tokens, padded + batch.total_tokens - batch.real_tokens
        bar.update(1)
        if (step + 1) % settings.logging_steps == 0 or step + 1 == total_steps:
            loss_log.flush(total_steps)
            recent = loss_log.recent(settings.logging_steps)
            bar.set_postfix_str(" ".join(f"{k}:{v:.3f}" for k, v in recent.items()), refresh=False)
            log.info("step %d/%d, loss per adapter: %s", step + 1, total_steps, ", ".join(f"{k} {v:.4f}" for k, v in recent.items()))
        if on_step is not None:
            on_step(StepStats(step + 1, total_steps, tuple(adapters[i] for i in active), row_loss.detach(),
                              batch.real_tokens, batch.total_tokens - batch.real_tokens))
        if (step + 1) % settings.save_steps == 0 and step + 1 < total_steps:
            loss_log.flush(total_steps)
            save_checkpoint(ckpt, step + 1, job.lora, optimizer, losses)
    bar.close()
    log.info("training done: %d steps in %.1f s; %d real tokens, %.1f %% of the streams' tokens were bucket padding",
             total_steps - start, time.perf_counter() - began, real, 100 * padded / max(real + padded, 1))
    if isinstance(step_fn, StepGraphs):
        log.info("CUDA graphs: %d stream shapes captured, %d of %d steps replayed", len(step_fn.graphs), step_fn.replays, total_steps - start)


def _forward_backward(job: _Job) -> Callable[[Any], Any]:
    """One step's forward and backward over a packed batch: returns the rows' losses ([R], detached: nothing of the
    step's autograd graph outlives it, which a CUDA graph capture of the next step needs); their gradients are added
    to the adapters' (the optimizer steps outside)."""
    from .packing import row_losses

    body, head, lora, grad_accum = job.model.base_model, job.model.get_output_embeddings(), job.lora, job.settings.grad_accum

    def forward_backward(batch: Any) -> Any:
        with lora.tokens(batch.token_adapter, batch.adapter_ends):  # through the backward too: gradient checkpointing reruns the forward there
            hidden = body(input_ids=batch.input_ids, position_ids=batch.position_ids, **batch.attention_kwargs()).last_hidden_state
            row_loss = row_losses(head(hidden[0, batch.label_at]), batch)
            (row_loss.sum() / grad_accum).backward()
        return row_loss.detach()

    return forward_backward


def _write_adapter(job: _Job, i: int, losses: Sequence[float], schedule: Sequence[float], base_dir: str | os.PathLike[str],
                   out_dir: str | os.PathLike[str]) -> None:
    """Adapter ``i`` of the job as a peft folder with its loss curve and training record, under its final name only when whole."""
    from .stacked_lora import save_peft_adapter

    settings, k = job.settings, job.adapters[i]
    with atomic_directory(out_dir) as tmp:
        save_peft_adapter(job.lora, i, tmp, base_dir)
        write_loss_curve(tmp / LOSS_CURVE, loss_curve(k, losses, settings.logging_steps, settings.grad_accum,
                                                      settings.learning_rate, schedule))
        (tmp / "logivote_train.json").write_text(json.dumps(
            {"adapter": k, "settings": asdict(settings), "frozen_gemm": job.frozen_gemm, "examples": len(job.examples[i]),
             "steps": len(job.streams[i]), "job_adapters": job.adapters, "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1)},
            indent=1, default=str) + "\n")
    log.info("adapter %d written to %s", k, out_dir)


def _choose_frozen_gemm(choice: str, lora: Any, device: Any) -> dict[str, Any]:
    """``train.frozen_gemm`` resolved on ``device`` and applied to ``lora``'s frozen linears, said in one log line;
    the training record's ``frozen_gemm`` (path, why, how many linears)."""
    from .fp8_frozen import resolve

    path, why = resolve(choice, device)
    record: dict[str, Any] = {"path": path, "reason": why}
    if path == "fp8":
        fp8, wrapped = lora.use_fp8()
        record["fp8_linears"] = fp8
        if fp8 == 0:
            record.update(path="bf16", reason=f"{why}, but no frozen linear is GPTQ-Int4 with dimensions divisible by 16")
        elif fp8 < wrapped:
            record["reason"] += f"; {wrapped - fp8} of {wrapped} linears stay in the training dtype (not GPTQ-Int4, or odd sizes)"
    log.info("frozen GEMMs: %s (%s)", {"fp8": "FP8 e4m3, per-tensor scales, float32 accumulation"}.get(record["path"],
             "the training dtype"), record["reason"])
    return record


def _optimizer_step(optimizer: Any, stepping: Sequence[int], schedules: Sequence[Sequence[float]], done: int,
                    learning_rate: float, device: Any) -> None:
    """Step the adapters ``stepping`` (each at its own schedule's rate), then clear their gradients; the others
    keep theirs (they accumulate or sit out). ``done``: the optimizer steps each of them has taken, ``step //
    grad_accum`` for every adapter still in its stream (its last, possibly short, window ends its stream)."""
    import torch

    from .packing import to_device

    chosen = set(stepping)
    on = [i in chosen for i in range(len(schedules))]
    lrs = [learning_rate * schedule[done] if stepped else 0.0 for schedule, stepped in zip(schedules, on)]
    mask = None if all(on) else to_device(on, torch.bool, device)
    optimizer.step(to_device(lrs, torch.float64, device), mask)
    optimizer.zero_grad(mask)


def _log_setup(model: Any, lora: Any, adapters: Sequence[int], on_gpu: bool) -> None:
    import torch

    memory = base_memory(model)
    log.info("frozen base: %.1f MiB in memory (%s)%s", memory["bytes"] / 2**20,
             ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(memory["by_dtype"].items())),
             f"; quantized linears: {', '.join(memory['quantized_kernels'])}" if memory["quantized_kernels"] else "")
    per_adapter = sum(p[0].numel() for p in lora.parameters())
    log.info("LoRA: %d adapters (%s) in one job, %d trainable parameters each, %d layers wrapped",
             len(adapters), ", ".join(map(str, adapters)), per_adapter, len(lora.layers))
    if on_gpu:
        devices = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        log.info("CUDA_VISIBLE_DEVICES=%s: %s", os.environ.get("CUDA_VISIBLE_DEVICES"),
                 ", ".join(f"cuda:{i} {d.name} GPU-{d.uuid}" for i, d in enumerate(devices)))
        log.info("model placement: %s", sorted({str(p.device) for p in model.parameters()}))


def train_adapter(
    base_dir: str | os.PathLike[str],
    subset_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    settings: TrainSettings,
    on_step: Callable[[StepStats], None] | None = None,
) -> Any:
    """One adapter: :func:`train_adapters` with K = 1."""
    return train_adapters(base_dir, {0: subset_path}, {0: out_dir}, checkpoint_dir, settings, on_step)
