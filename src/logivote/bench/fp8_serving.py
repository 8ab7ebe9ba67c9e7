"""Benchmark (not a test): one trained model served with ``serve.weights: int4`` and ``fp8`` on a GPU (issue 41).

The workflow's own :func:`logivote.serving.inference.predict` serves the base and every adapter twice, once as
the int4 checkpoint and once written as an FP8 checkpoint (:mod:`logivote.serving.serving_path`), each asking
every question of ``--questions`` (greedy, structured-output choice); it prints one JSON line: the share of
(adapter, question) letters that agree, and where the questions have gold answers the mean adapter's and the
vote's accuracy on each path, with each phase's wall time.

    python -m logivote.bench.fp8_serving --base results/base_model --adapters results/adapters \\
        --questions results/data/dev.jsonl --out fp8_serving.jsonl [--dtype bfloat16]

(the embedded default's trained model, copied from a CPU run: a model that has learnt something).
With ``--adapters-b DIR`` it compares two adapter sets instead, both served as int4 (``bench.fp8_train``'s bf16- and
FP8-trained ones).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from logivote.bench import report
from logivote.data.flatten import read_questions
from logivote.data.jsonl import read_rows


def main(argv: list[str] | None = None) -> None:
    import torch

    from logivote.logs import log_to
    from logivote.serving.inference import predict

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapters", required=True, help="folder of adapter folders named 0, 1, ...")
    ap.add_argument("--adapters-b", help="a second adapter set: compare it with --adapters, both served int4")
    ap.add_argument("--questions", required=True, help="flattened questions (JSONL); gold answers where present")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/fp8_serving")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    adapters = {int(p.name): str(p) for p in sorted(Path(args.adapters).iterdir()) if p.name.isdigit()}
    questions = read_questions(args.questions)
    gold = {q["qid"]: q.get("answer") for q in questions}
    positions = json.loads((Path(args.base) / "config.json").read_text())["max_position_embeddings"]
    serve = {"dtype": args.dtype, "max_model_len": min(4096, positions), "max_loras": len(adapters), "max_lora_rank": 8, "prefix_caching": True,
             "block_size": 16, "extra_args": ["--gpu-memory-utilization", "0.5", "--enforce-eager"],
             "env": {"VLLM_USE_FLASHINFER_SAMPLER": "0", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
             "health_timeout_s": 900, "gpus": 1, "threads": 8}
    client = {"threads": 64, "timeout_s": 600, "retries": 3, "backoff_s": 1.0}
    letters: dict[str, dict[tuple[int, str], str]] = {}
    result: dict[str, Any] = {"bench": "fp8_serving", "tag": args.tag, "gpu": torch.cuda.get_device_name(0), "adapters": len(adapters),
                              "questions": len(questions), "dtype": args.dtype}
    if args.adapters_b:
        other = {int(p.name): str(p) for p in sorted(Path(args.adapters_b).iterdir()) if p.name.isdigit()}
        runs = {"a": (adapters, "int4"), "b": (other, "int4")}
        result.update(adapters_a=args.adapters, adapters_b=args.adapters_b)
    else:
        runs = {"int4": (adapters, "int4"), "fp8": (adapters, "fp8")}
    for name, (served, weights) in runs.items():
        run = Path(args.work) / name
        run.mkdir(parents=True, exist_ok=True)
        outs = {k: str(run / f"pred_{k}.jsonl") for k in served}
        started = time.monotonic()
        with log_to(run / "predict.log"):
            predict(args.base, served, args.questions, outs, str(run / "cache.jsonl"), {**serve, "weights": weights}, client,
                    str(run / "server.log"))
        result[f"{name}_wall_s"] = round(time.monotonic() - started, 1)
        letters[name] = {(k, row["qid"]): row["answer"] for k in served for row in read_rows(outs[k])}
    a, b = (letters[name] for name in runs)
    result["pairs"] = len(a)
    result["agree"] = sum(a[key] == b.get(key) for key in a) / len(a)
    result["invalid"] = {w: sum(v == "invalid" for v in letters[w].values()) for w in letters}
    graded = [qid for qid, answer in gold.items() if answer]
    if graded:
        for weights, table in letters.items():
            per_adapter = [sum(table[(k, qid)] == gold[qid] for qid in graded) / len(graded) for k in adapters]
            votes = {qid: Counter(table[(k, qid)] for k in adapters).most_common(1)[0][0] for qid in graded}
            result[f"{weights}_mean_adapter_accuracy"] = sum(per_adapter) / len(per_adapter)
            result[f"{weights}_vote_correct"] = sum(votes[qid] == gold[qid] for qid in graded)
        result["graded_questions"] = len(graded)
    report(result, args.out)


if __name__ == "__main__":
    main()
