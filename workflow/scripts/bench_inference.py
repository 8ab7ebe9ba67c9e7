"""Benchmark (not a test): the recipe's way of inference against ours, same adapters and questions.

(a) the recipe's way: one server start per adapter (that adapter alone), free generation of up
    to ``--free-tokens`` tokens, the letter parsed from the text;
(b) ours: one server with every adapter, one constrained token per request.
Both use the same 64-thread client and prompt. Prints answers/s for each, the ratio, and the
prompt tokens per (question, adapter) pair, and how many of them the server computed (the rest came
from its prefix cache), read from the server's Prometheus counters.

    python workflow/scripts/bench_inference.py [--adapters 21] [--free-tokens 4]
    (after `snakemake --cores all`: uses results/base_model/tiny, results/adapters/*, results/data/test.jsonl)
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import requests
import yaml

from logivote.client import Ask, AnswerCache, ClientSettings, ask_all
from logivote.contracts import INVALID
from logivote.flatten import read_questions
from logivote.inference import ServeSettings, adapter_name
from logivote.server import VllmServer


def counters(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
        out[name] = sum(float(m) for m in re.findall(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))
    return out


def run(serve: ServeSettings, base: str, adapters: dict[str, str], questions: list, free_tokens: int, tmp: Path, tag: str) -> dict:
    asks = [Ask(name, f"{tag}-{name}", q, free_text_tokens=free_tokens) for name in adapters for q in questions]
    cache = AnswerCache(tmp / f"{tag}-{len(adapters)}-{time.time()}.jsonl")
    start = time.perf_counter()
    with VllmServer(serve.spec(base, adapters), tmp / f"{tag}.log") as server:
        ready = time.perf_counter()
        answers = ask_all(server.url, asks, cache, ClientSettings(threads=64))
        asked = time.perf_counter()
        stats = counters(server.url)
    return {"answers": answers, "asks": asks, "total_s": time.perf_counter() - start, "startup_s": ready - start,
            "asking_s": asked - ready, "prompt_tokens": stats["vllm:prompt_tokens_total"],
            "cached_tokens": stats["vllm:prefix_cache_hits_total"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=21)
    parser.add_argument("--free-tokens", type=int, default=4)
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    serve = ServeSettings(**config["serve"])
    base = "results/base_model/tiny"
    questions = read_questions("results/data/test.jsonl")
    adapters = {adapter_name(k): f"results/adapters/{k}" for k in range(args.adapters)}
    pairs = len(adapters) * len(questions)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        recipe = {"total_s": 0.0, "startup_s": 0.0, "asking_s": 0.0, "prompt_tokens": 0.0, "cached_tokens": 0.0, "invalid": 0}
        for name, path in adapters.items():
            part = run(serve, base, {name: path}, questions, args.free_tokens, tmp, "recipe")
            for key in ("total_s", "startup_s", "asking_s", "prompt_tokens", "cached_tokens"):
                recipe[key] += part[key]
            recipe["invalid"] += sum(part["answers"][a.key].answer == INVALID for a in part["asks"])
        ours = run(serve, base, adapters, questions, 0, tmp, "ours")
        ours["invalid"] = sum(ours["answers"][a.key].answer == INVALID for a in ours["asks"])
    report = {"adapters": len(adapters), "questions": len(questions), "pairs": pairs}
    for label, r in (("recipe", recipe), ("ours", ours)):
        report[label] = {
            "answers_per_s": pairs / r["total_s"],
            "answers_per_s_excluding_startup": pairs / r["asking_s"],
            "wall_s": round(r["total_s"], 1),
            "server_startup_s": round(r["startup_s"], 1),
            "invalid_answers": r["invalid"],
            "prompt_tokens_per_pair": r["prompt_tokens"] / pairs,
            "prompt_tokens_computed_per_pair": (r["prompt_tokens"] - r["cached_tokens"]) / pairs,
        }
    report["ratio_answers_per_s"] = report["ours"]["answers_per_s"] / report["recipe"]["answers_per_s"]
    report["ratio_excluding_startup"] = report["ours"]["answers_per_s_excluding_startup"] / report["recipe"]["answers_per_s_excluding_startup"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
