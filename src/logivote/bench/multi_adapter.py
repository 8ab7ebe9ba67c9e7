"""Benchmark (not a test): K adapters per training step against the Trainer path logivote had before.

For each model shape (random weights, built locally) and K, the workflow's own
:func:`logivote.training.loop.train_adapters` trains K adapters for ``--steps`` steps
on synthetic puzzles whose lengths are drawn from the real training data's
length distribution (``resources/benchmarks/real_train_lengths.json``; each
adapter its own draw, so rows of a step differ in length and are padded).
The reference is :func:`trainer_baseline`: transformers' Trainer + peft, one
adapter, batch 1, logits over every position — how ``train_adapter`` worked
before ``train.adapters_per_job``.

Printed per case (one JSON line): real (non-padding) tokens/s, padding share,
step time, peak GPU memory, and model FLOP/s as a share of the bf16 peak
measured in the same run (an 8192³ bf16 matmul). FLOPs counted are only those
the step needs: 4 × body parameters × real tokens (forward 2N, gradient with
respect to activations 2N; the frozen base needs no weight gradients) plus
4 × head parameters × labelled tokens (the logits are computed only there);
attention's own FLOPs and LoRA's are left out, so the share is a lower bound.

    python -m logivote.bench.multi_adapter --out bench.jsonl [--shapes qwen0.5b qwen32b-4layers] [--ks 1 3 7 21] [--steps 60]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from logivote.base.tiny_model import build_tiny_model
from logivote.data.jsonl import atomic_write_jsonl, dumps
from logivote.training import fused, stacked_lora
from logivote.training.loop import StepStats, train_adapters, use_expandable_segments
from logivote.training.settings import SELECTIVE, TrainSettings

from .train_gpu import SHAPES, Clock, padded_questions

LENGTHS = Path(__file__).resolve().parents[3] / "resources" / "benchmarks" / "real_train_lengths.json"


def measured_peak_tflops() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - start) / 1e12


def synthetic_subset(path: Path, n: int, seed: int, tokenizer: Any, lengths: list[int]) -> list[int]:
    """``n`` puzzles whose encoded lengths follow ``lengths``; returns the target lengths drawn."""
    from logivote.data.prompt import encode_example

    rng = random.Random(seed)
    targets = [rng.choice(lengths) for _ in range(n)]
    probe = padded_questions(1, 2000, 1.0)[0]
    chars_per_token = len(probe["problem"]) / len(tokenizer(probe["problem"])["input_ids"])
    overhead = len(encode_example(tokenizer, probe, 10**6)["input_ids"]) - len(tokenizer(probe["problem"])["input_ids"])
    rows = []
    for i, target in enumerate(targets):
        q = padded_questions(1, max(20, target - overhead), chars_per_token)[0]
        q = {**q, "qid": f"bench{seed}_{i}#0", "puzzle_id": f"bench{seed}_{i}"}
        rows.append(q)
    atomic_write_jsonl(path, rows)
    return targets


def body_and_head_params(base: Path) -> tuple[int, int]:
    config = json.loads((base / "config.json").read_text())
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o; k, v
    mlp = 3 * h * inter
    return layers * (attn + mlp), config["vocab_size"] * h


def settings_for(on_gpu: bool, steps: int, bucket: int = 1, gradient_checkpointing: bool | str = False,
                 lora_dropout: float = 0.05, cuda_graphs: bool = False, frozen_gemm: str = "bf16") -> TrainSettings:
    return TrainSettings(epochs=1, batch_size=1, grad_accum=1, learning_rate=1e-4, max_len=2048, save_steps=10**6,
                         logging_steps=20, dtype="bfloat16" if on_gpu else "float32", gpus=1 if on_gpu else 0, threads=4,
                         lora_dropout=lora_dropout, bucket_tokens=bucket, gradient_checkpointing=gradient_checkpointing,
                         cuda_graphs=cuda_graphs, frozen_gemm=frozen_gemm)


def busy_ms(events: Any) -> float:
    """How long the GPU ran kernels: the union of the profiled device events' intervals (kernels of several streams
    that overlap count once; a sum over the profile's table would count a kernel under its operator as well)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, reached = 0.0, float("-inf")
    for start, end in spans:
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return busy / 1e3


class Profiled(Clock):
    """A :class:`Clock` that also records steps 11-13 with torch.profiler: where the time of a step goes (three steps: a
    full-depth step makes about 100 000 events)."""

    def __init__(self, warmup: int = 5) -> None:
        super().__init__(warmup)
        self.profiler: Any = None
        self.table = ""
        self.gpu_busy_ms = 0.0
        self.wall_ms = 0.0

    def __call__(self, stats: StepStats) -> None:
        super().__call__(stats)
        if stats.step in (10, 13) and torch.cuda.is_available():
            torch.cuda.synchronize()
        if stats.step == 10:
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self._t0 = time.perf_counter()
        elif stats.step == 13 and self.profiler is not None:
            self.wall_ms = 1e3 * (time.perf_counter() - self._t0) / 3
            self.profiler.__exit__(None, None, None)
            events = self.profiler.key_averages()
            key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            self.table = events.table(sort_by=key, row_limit=25, max_name_column_width=60)
            self.table += "\n" + events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60)
            self.gpu_busy_ms = busy_ms(self.profiler.events()) / 3
            self.profiler = None


def run_multi(base: Path, subsets: dict[int, Path], workdir: Path, steps: int, peak: float, profile: bool = False,
              bucket: int = 1, gradient_checkpointing: bool | str = False, lora_dropout: float = 0.05,
              cuda_graphs: bool = False, warmup: int = 5, frozen_gemm: str = "bf16") -> dict[str, Any]:
    on_gpu = torch.cuda.is_available()
    gc.collect()  # frees the previous case's model where nothing else holds it (gptqmodel does: peak memory is then
    # right only for a process's first case; README)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clock = Profiled(warmup) if profile else Clock(warmup)
    tag = f"k{len(subsets)}-{time.time_ns()}"
    settings = settings_for(on_gpu, steps, bucket, gradient_checkpointing, lora_dropout, cuda_graphs, frozen_gemm)
    train_adapters(base, subsets, {k: workdir / tag / str(k) for k in subsets}, workdir / f"ckpt-{tag}", settings, on_step=clock)
    result = {**summarize(clock, base, peak, len(subsets)), "bucket_tokens": bucket, "gradient_checkpointing": gradient_checkpointing,
              "lora_dropout": lora_dropout, "lora_gemm": stacked_lora.LORA_GEMM, "fuse_elementwise": fused.FUSE_ELEMENTWISE,
              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "cuda_graphs": cuda_graphs, "untimed_steps": warmup,
              "frozen_gemm": frozen_gemm}
    if profile:
        print(f"--- profile, K={len(subsets)}, steps 11-13: {clock.wall_ms:.1f} ms per step, GPU busy {clock.gpu_busy_ms:.1f} ms per step",
              clock.table, sep="\n", flush=True)
        result.update(profiled_step_ms=clock.wall_ms, gpu_busy_ms_per_step=clock.gpu_busy_ms)
    return result


def summarize(clock: Clock, base: Path, peak: float, k: int) -> dict[str, Any]:
    elapsed = clock.seconds
    body, head = body_and_head_params(base)
    flops = 4 * body * clock.real + 4 * head * clock.labelled
    return {
        "K": k,
        "timed_steps": clock.steps,
        "step_ms": 1e3 * elapsed / clock.steps,
        "per_adapter_step_ms": 1e3 * elapsed / clock.steps / k,
        "real_tokens_per_s": clock.real / elapsed,
        "padding_share": clock.padded / max(clock.real + clock.padded, 1),
        "model_tflops": flops / elapsed / 1e12,
        "share_of_peak": flops / elapsed / 1e12 / peak if peak == peak else None,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def trainer_baseline(base: Path, subset: Path, workdir: Path, steps: int, peak: float) -> dict[str, Any]:
    """The path before issue 10: Trainer + peft, one adapter, batch 1, full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from logivote.data.flatten import read_questions
    from logivote.data.prompt import encode_example
    from logivote.training.loop import load_base
    from logivote.training.settings import RECIPE_TARGETS

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    tokenizer, model = load_base(base, dtype, on_gpu)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=RECIPE_TARGETS))
    examples = [encode_example(tokenizer, q, 2048) for q in read_questions(subset)][:steps]
    clock = Clock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            clock(StepStats(state.global_step, len(examples), (0,), torch.zeros(1), len(examples[state.global_step - 1]["input_ids"]), 0))

    args = TrainingArguments(output_dir=str(workdir / "trainer"), per_device_train_batch_size=1, num_train_epochs=1, learning_rate=1e-4,
                             logging_steps=20, save_strategy="no", bf16=on_gpu, use_cpu=not on_gpu, report_to="none",
                             dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    # no shuffling, so step i trains examples[i - 1] and the clock counts its tokens
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[Tick()],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(examples)  # type: ignore[method-assign]
    trainer.train()
    result = summarize(clock, base, peak, 1)
    result["path"] = "trainer+peft (before)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="+", default=["qwen0.5b", "qwen32b-4layers"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 3, 7, 21])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 3 steps of each K: top kernels and GPU busy time")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Trainer + peft reference")
    parser.add_argument("--buckets", nargs="+", type=int, default=[128], help="train.bucket_tokens values to run each K with")
    parser.add_argument("--quantize", choices=("none", "gptq-int4", "random-gptq-int4"), default="none",
                        help="train over a GPTQ-Int4 copy of each shape: calibrated from the float model, or random int4 weights "
                             "written directly (bench.full_depth.build_random_gptq: no float model, for full depth)")
    parser.add_argument("--gradient-checkpointing", nargs="?", const=True, default=False, choices=(True, *SELECTIVE),
                        help="checkpoint every decoder layer; 'selective': keep q, k, v and o's outputs; 'selective_gate': "
                             "and the gate projection's (logivote.training.recompute)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="the recipe's 0.05; 0 to compare with an anchor without dropout")
    parser.add_argument("--lora-gemm", choices=("auto", "onehot"), default="auto",
                        help="stacked_lora.LORA_GEMM: 'onehot' turns the grouped GEMMs off (to measure them)")
    parser.add_argument("--fuse-elementwise", choices=("auto", "off"), default="auto",
                        help="fused.FUSE_ELEMENTWISE: 'off' keeps transformers' eager RMSNorm, SwiGLU and rotary embedding "
                             "(to measure the fusion)")
    parser.add_argument("--cuda-graphs", action="store_true", help="train.cuda_graphs: replay each stream shape's step from a CUDA graph")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (with --cuda-graphs: those that meet a shape first)")
    parser.add_argument("--frozen-gemm", nargs="+", choices=("bf16", "fp8", "auto"), default=["bf16"],
                        help="train.frozen_gemm: the frozen base's GEMMs in bf16 (as every earlier row) or FP8 e4m3; several: one run each")
    parser.add_argument("--work", help="keep the built bases here (reused by a later run) instead of a temporary folder")
    args = parser.parse_args()
    use_expandable_segments()  # as training does, before this process's first CUDA allocation (the peak measurement)
    stacked_lora.LORA_GEMM = args.lora_gemm
    fused.FUSE_ELEMENTWISE = args.fuse_elementwise
    lengths = json.loads(LENGTHS.read_text())["lengths"]
    peak = measured_peak_tflops()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    def emit(row: dict[str, Any]) -> None:
        line = dumps({"device": device, "measured_bf16_peak_tflops": peak, **row})
        print(line, flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes:
            base = work / f"base-{shape}"
            texts = [q["problem"] + q["question"] for q in padded_questions(64, 400, 1.0)]
            if args.quantize == "random-gptq-int4":
                from .full_depth import build_random_gptq

                started = time.perf_counter()
                base = build_random_gptq(work / f"base-{shape}-random-gptq", texts, SHAPES[shape],
                                         device="cuda" if torch.cuda.is_available() else "cpu")
                built_s = time.perf_counter() - started
            else:
                build_tiny_model(texts, base, SHAPES[shape])
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base)
            subsets = {k: work / f"{shape}-subset-{k}.jsonl" for k in range(max(args.ks))}
            drawn = [t for k, path in subsets.items() for t in synthetic_subset(path, args.steps, k, tokenizer, lengths)]
            common = {"shape": shape, "steps": args.steps, "mean_target_tokens": sum(drawn) / len(drawn)}
            if args.quantize == "random-gptq-int4":
                common.update(quantize="random-gptq-int4", build_s=built_s)
            if args.quantize == "gptq-int4":
                from .train_gpu import quantized_base

                common.update(quantize="gptq-int4", **quantized_base(base, work / f"base-{shape}-gptq", 272))
                base = work / f"base-{shape}-gptq"
            if not args.no_baseline:
                try:
                    emit({**common, **trainer_baseline(base, subsets[0], work, args.steps, peak)})
                except Exception as err:  # noqa: BLE001 - a failing case must not lose the others
                    emit({**common, "path": "trainer+peft (before)", "error": f"{type(err).__name__}: {err}"[:1000]})
            for k, bucket, gemm in ((k, b, g) for k in args.ks for b in args.buckets for g in args.frozen_gemm):
                try:
                    emit({**common, "path": "train_adapters",
                          **run_multi(base, {i: subsets[i] for i in range(k)}, work, args.steps, peak, args.profile, bucket,
                                      args.gradient_checkpointing, args.lora_dropout, args.cuda_graphs, args.warmup, gemm)})
                except torch.OutOfMemoryError:
                    emit({**common, "path": "train_adapters", "K": k, "frozen_gemm": gemm, "error": "OOM"})
                except Exception as err:  # noqa: BLE001
                    traceback.print_exc()
                    emit({**common, "path": "train_adapters", "K": k, "frozen_gemm": gemm, "error": f"{type(err).__name__}: {err}"[:1000]})


if __name__ == "__main__":
    main()
