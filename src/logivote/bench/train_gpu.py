"""Benchmark (not a test): the workflow's real training code path on a GPU.

Builds Qwen2-architecture models of realistic shape with random weights (no
download), writes synthetic puzzles padded to a target prompt length, and runs
``logivote.training.loop.train_adapter`` (Trainer + peft LoRA, the recipe's settings)
for a few hundred steps. Prints one JSON line per case: tokens/s, peak GPU
memory and where the step time goes (forward, backward, optimizer, rest).

    python -m logivote.bench.train_gpu --out bench.jsonl [--cases qwen0.5b qwen32b-4layers]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from logivote.base.tiny_model import TinyShape, build_tiny_model
from logivote.data.jsonl import atomic_write_jsonl, dumps
from logivote.data.sample_data import make_puzzles
from logivote.training.loop import StepStats, train_adapter
from logivote.training.settings import TrainSettings

from .full_depth import QWEN32B

SHAPES = {
    # the embedded default's shape: a smoke test of this script on a CPU
    "tiny": TinyShape(),
    # Qwen2.5-0.5B-Instruct's shape
    "qwen0.5b": TinyShape(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, dtype="bfloat16"),
    # Qwen2.5-32B-Instruct's shape, 8 of its 64 layers (split over two GPUs with --gpus 2)
    "qwen32b-8layers": TinyShape(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=8,
                                 num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, dtype="bfloat16"),
    # Qwen2.5-32B-Instruct's shape, all 64 layers (only as a random GPTQ-Int4 checkpoint: bench.full_depth.build_random_gptq)
    "qwen32b": QWEN32B,
    # Qwen2.5-32B-Instruct's shape, 4 of its 64 layers
    "qwen32b-4layers": TinyShape(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=4,
                                 num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, dtype="bfloat16"),
}


class Clock:
    """``on_step`` callback of :func:`logivote.training.loop.train_adapters`: times the steps after ``warmup`` (CUDA-synchronised)."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.real = self.padded = self.labelled = self.steps = 0

    def __call__(self, stats: StepStats) -> None:
        if stats.step < self.warmup:
            return
        if stats.step in (self.warmup, stats.total_steps) and torch.cuda.is_available():
            torch.cuda.synchronize()  # only at the ends: a sync every step would stall the host's queue of launches
        now = time.perf_counter()
        if stats.step == self.warmup:
            self.start = now
        else:
            self.end = now
            self.steps += 1
            self.real += stats.real_tokens
            self.padded += stats.padded_tokens
            self.labelled += 2 * len(stats.adapters)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def padded_questions(n: int, target_tokens: int, tokenizer_chars_per_token: float) -> list[dict]:
    """Sample puzzles whose problem text is padded (with more closed-world facts) to about ``target_tokens``."""
    rng = random.Random(0)
    out = []
    for puzzle in make_puzzles("bench", n, seed=1, with_answers=True):
        filler = "。".join(f"{rng.choice('甲乙丙丁戊己庚辛')}{i}号不是{rng.choice('红黄蓝绿')}色的" for i in range(4000))
        need = int(target_tokens * tokenizer_chars_per_token)
        problem = (puzzle["problem"] + "\n补充事实：" + filler)[:need]
        for index, q in enumerate(puzzle["questions"]):
            out.append({"qid": f"{puzzle['id']}#{index}", "puzzle_id": puzzle["id"], "question_index": index, "source": "bench",
                        "problem": problem, "question": q["question"], "options": q["options"], "answer": q["answer"]})
    return out[:n]


def quantized_base(float_dir: Path, out_dir: Path, seq_tokens: int) -> dict:
    """GPTQ-Int4 of ``float_dir`` (group size 128, as Qwen's), calibrated on 64 bench prompts; seconds taken.

    Runs in a child process, so the quantizer's GPU memory is not counted in the training's peak.
    """
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "logivote.bench.train_gpu", "--quantize-only", str(float_dir), str(out_dir), str(seq_tokens)],
                   check=True)
    return {"quantize_s": time.perf_counter() - start}


def _quantize_only(float_dir: Path, out_dir: Path, seq_tokens: int) -> None:
    from transformers import AutoTokenizer

    from logivote.base.quantize import calibration_texts, copy_missing, quantize_gptq

    tok = AutoTokenizer.from_pretrained(float_dir)
    texts = calibration_texts(tok, padded_questions(64, seq_tokens, 1.0), 64)
    quantize_gptq(float_dir, out_dir, texts, group_size=128, device="cuda:0" if torch.cuda.is_available() else "cpu")
    copy_missing(float_dir, out_dir)


def run_case(name: str, seq_tokens: int, steps: int, workdir: Path, gradient_checkpointing: bool, gpus: int = 1,
             quantize: str = "none") -> dict:
    shape = SHAPES[name]
    on_gpu = torch.cuda.is_available()
    base = workdir / f"base-{name}"
    texts = [q["problem"] + q["question"] for q in padded_questions(64, 400, 1.0)]
    if not base.exists():
        build_tiny_model(texts, base, shape)
    extra: dict = {"quantize": quantize}
    if quantize == "gptq-int4":
        qbase = workdir / f"base-{name}-gptq"
        if not qbase.exists():
            extra.update(quantized_base(base, qbase, seq_tokens))
        base = qbase
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    from logivote.data.prompt import encode_example

    sample = padded_questions(4, 2000, 1.0)[0]
    problem_tokens = len(tok(sample["problem"])["input_ids"])
    chars_per_token = len(sample["problem"]) / problem_tokens
    overhead = len(encode_example(tok, sample, 10**6)["input_ids"]) - problem_tokens  # instruction, question, options
    questions = padded_questions(steps // 2, max(50, seq_tokens - overhead), chars_per_token)
    subset = workdir / f"subset-{name}-{seq_tokens}.jsonl"
    atomic_write_jsonl(subset, questions)
    settings = TrainSettings(epochs=2, batch_size=1, grad_accum=1, learning_rate=1e-4, max_len=max(1800, seq_tokens + 200),
                             save_steps=10_000, logging_steps=50, dtype="bfloat16" if on_gpu else "float32",
                             gpus=gpus if on_gpu else 0, threads=4,
                             gradient_checkpointing=gradient_checkpointing)
    clock = Clock()
    if on_gpu:
        for i in range(torch.cuda.device_count()):
            torch.empty(0, device=f"cuda:{i}")  # a device's allocator must exist before its stats can be reset
            torch.cuda.reset_peak_memory_stats(i)
    start = time.perf_counter()
    tag = f"{name}-{quantize}-{seq_tokens}"
    model = train_adapter(base, subset, workdir / f"adapter-{tag}", workdir / f"ckpt-{tag}", settings, on_step=clock)
    wall = time.perf_counter() - start
    lengths = [len(tok(q["problem"])["input_ids"]) for q in questions[:20]]
    n_steps = len(questions) * 2  # two epochs
    total_tokens = 2 * sum(len(encode_example(tok, q, 10**6)["input_ids"]) for q in questions)
    from logivote.training.loop import base_memory

    memory = base_memory(model.model)
    result = {
        "case": name,
        **extra,
        "seq_tokens_target": seq_tokens,
        "base_memory_gib": memory["bytes"] / 2**30,
        "base_memory_by_dtype_gib": {k: v / 2**30 for k, v in memory["by_dtype"].items()},
        "quantized_kernels": memory["quantized_kernels"],
        "gradient_checkpointing": gradient_checkpointing,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "params": sum(p.numel() for p in model.model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters(0)),
        "steps": n_steps,
        "mean_seq_tokens": total_tokens / (2 * len(questions)),
        "problem_tokens_sample": lengths[:3],
        "wall_incl_load_s": wall,
        "timed_steps": clock.steps,
        "tokens_per_s": clock.real / clock.seconds,
        "step_ms": 1e3 * clock.seconds / clock.steps,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "gpus": gpus if on_gpu else 0,
        "peak_gpu_mem_gib_per_gpu": [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())] if on_gpu else [],
        "model_devices": sorted({str(p.device) for p in model.model.parameters()}),
    }
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--quantize-only"]:  # the child process of quantized_base()
        _quantize_only(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", nargs="+", default=["qwen0.5b:700:300", "qwen0.5b:1800:200", "qwen32b-4layers:1800:200"],
                        help="shape:seq_tokens:steps[:gptq-int4] (the suffix quantizes the random float model first)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per training; >1 spreads the model over them (device_map=auto)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            name, seq, steps, *quant = case.split(":")
            try:
                result = run_case(name, int(seq), int(steps), Path(tmp), args.gradient_checkpointing, args.gpus, *quant)
            except Exception as err:  # one failing case must not lose the others' figures
                import traceback

                traceback.print_exc()
                result = {"case": case, "error": f"{type(err).__name__}: {err}"[:2000]}
            line = dumps(result)
            print(line, flush=True)
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
