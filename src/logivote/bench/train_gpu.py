"""Benchmark (not a test): the workflow's real training code path on a GPU.

Builds Qwen2-architecture models of realistic shape with random weights (no
download), writes synthetic puzzles padded to a target prompt length, and runs
``logivote.train.train_adapter`` (Trainer + peft LoRA, the recipe's settings)
for a few hundred steps. Prints one JSON line per case: tokens/s, peak GPU
memory and where the step time goes (forward, backward, optimizer, rest).

    python -m logivote.bench.train_gpu --out bench.jsonl [--cases qwen0.5b qwen32b-4layers]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from logivote.jsonl import atomic_write_jsonl, dumps
from logivote.sample_data import make_puzzles
from logivote.tiny_model import TinyShape, build_tiny_model
from logivote.train import TrainSettings, train_adapter

SHAPES = {
    # the embedded default's shape: a smoke test of this script on a CPU
    "tiny": TinyShape(),
    # Qwen2.5-0.5B-Instruct's shape
    "qwen0.5b": TinyShape(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, dtype="bfloat16"),
    # Qwen2.5-32B-Instruct's shape, 8 of its 64 layers (split over two GPUs with --gpus 2)
    "qwen32b-8layers": TinyShape(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=8,
                                 num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, dtype="bfloat16"),
    # Qwen2.5-32B-Instruct's shape, 4 of its 64 layers
    "qwen32b-4layers": TinyShape(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=4,
                                 num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, dtype="bfloat16"),
}


class StepTimer(TrainerCallback):
    """Splits each optimizer step into forward, backward, optimizer and the rest (CUDA-synchronised)."""

    def __init__(self) -> None:
        self.times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "step_total": 0.0}
        self.steps = 0
        self._marks: dict[str, float] = {}

    @staticmethod
    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        model.register_forward_pre_hook(lambda *a: self._marks.__setitem__("f0", self.now()))
        model.register_forward_hook(lambda *a: self._marks.__setitem__("f1", self.now()))

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._marks = {"s0": self.now()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        self._marks["b1"] = self.now()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        self._marks["o1"] = self.now()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        m = self._marks
        end = self.now()
        if state.global_step <= 5 or not {"f0", "f1", "b1", "o1"} <= m.keys():
            return  # warm-up steps are not counted
        self.times["forward"] += m["f1"] - m["f0"]
        self.times["backward"] += m["b1"] - m["f1"]
        self.times["optimizer"] += m["o1"] - m["b1"]
        self.times["step_total"] += end - m["s0"]
        self.steps += 1


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


def run_case(name: str, seq_tokens: int, steps: int, workdir: Path, gradient_checkpointing: bool, gpus: int = 1) -> dict:
    shape = SHAPES[name]
    on_gpu = torch.cuda.is_available()
    base = workdir / f"base-{name}"
    texts = [q["problem"] + q["question"] for q in padded_questions(64, 400, 1.0)]
    if not base.exists():
        build_tiny_model(texts, base, shape)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    from logivote.prompt import encode_example

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
    timer = StepTimer()
    if on_gpu:
        for i in range(torch.cuda.device_count()):
            torch.empty(0, device=f"cuda:{i}")  # a device's allocator must exist before its stats can be reset
            torch.cuda.reset_peak_memory_stats(i)
    start = time.perf_counter()
    model = train_adapter(base, subset, workdir / f"adapter-{name}", workdir / f"ckpt-{name}", settings, callbacks=[timer])
    wall = time.perf_counter() - start
    meta = json.loads((workdir / f"adapter-{name}" / "logivote_train.json").read_text())
    lengths = [len(tok(q["problem"])["input_ids"]) for q in questions[:20]]
    runtime = meta["metrics"]["train_runtime"]
    n_steps = len(questions) * 2

    total_tokens = 2 * sum(len(encode_example(tok, q, 10**6)["input_ids"]) for q in questions)
    counted = timer.times
    result = {
        "case": name,
        "gradient_checkpointing": gradient_checkpointing,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": n_steps,
        "mean_seq_tokens": total_tokens / (2 * len(questions)),
        "problem_tokens_sample": lengths[:3],
        "train_runtime_s": runtime,
        "wall_incl_load_s": wall,
        "tokens_per_s": total_tokens / runtime,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "gpus": gpus if on_gpu else 0,
        "peak_gpu_mem_gib_per_gpu": [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())] if on_gpu else [],
        "model_devices": sorted({str(p.device) for p in model.parameters()}),
        "timed_steps": timer.steps,
        "share_forward": counted["forward"] / counted["step_total"],
        "share_backward": counted["backward"] / counted["step_total"],
        "share_fwd_bwd": (counted["forward"] + counted["backward"]) / counted["step_total"],
        "share_optimizer": counted["optimizer"] / counted["step_total"],
        "share_steps_of_runtime": counted["step_total"] / runtime,
    }
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", nargs="+", default=["qwen0.5b:700:300", "qwen0.5b:1800:200", "qwen32b-4layers:1800:200"],
                        help="shape:seq_tokens:steps")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per training; >1 spreads the model over them (device_map=auto)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            name, seq, steps = case.split(":")
            result = run_case(name, int(seq), int(steps), Path(tmp), args.gradient_checkpointing, args.gpus)
            line = dumps(result)
            print(line, flush=True)
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
