"""Benchmark (not a test) of inference, two comparisons on the same adapters and questions.

``--compare recipe`` (resources/benchmarks/README.md "Inference: the recipe's way against ours"):
(a) the recipe's way: one server start per adapter (that adapter alone), free generation of up
    to ``--free-tokens`` tokens, the letter parsed from the text;
(b) ours: one server with every adapter, one constrained token per request.

``--compare prefix`` (resources/benchmarks/README.md "Prefix reuse"): ours twice, (a) with today's server settings before
prefix reuse was tuned (vLLM's default KV block of 128 tokens on CPU) and (b) with the configured
``serve.block_size``, requests in :func:`logivote.serving.inference.prefix_order` both times.

Both use the same 64-thread client and prompt, and print answers/s, wall time, and the prompt
tokens per (question, adapter) pair and how many of them the server computed (the rest came from
its prefix cache), read from the server's own Prometheus counters.

    python -m logivote.bench.inference [--compare recipe|prefix] [--config config.yaml ...] [--out FILE]
    (after `snakemake --cores all [--configfile ...]` with the same config: it reads the base model,
    results/adapters/* and results/data/test.jsonl)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

import requests
import yaml

from logivote.base.models import model_dir
from logivote.data.contracts import INVALID, adapter_name
from logivote.data.flatten import read_questions
from logivote.serving.client import AnswerCache, Ask, ClientSettings, ask_all
from logivote.serving.inference import ServeSettings, prefix_order
from logivote.serving.server import VllmServer


def counters(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
        out[name] = sum(float(m) for m in re.findall(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M))
    return out


def run(serve: ServeSettings, base: str, adapters: dict[str, str], questions: list, free_tokens: int, tmp: Path, tag: str) -> dict:
    asks = prefix_order([Ask(name, f"{tag}-{name}", q, free_text_tokens=free_tokens) for name in adapters for q in questions])
    cache = AnswerCache(tmp / f"{tag}-{len(adapters)}-{time.time()}.jsonl")
    start = time.perf_counter()
    with VllmServer(serve.spec(base, adapters), tmp / f"{tag}.log") as server:
        ready = time.perf_counter()
        answers = ask_all(server.url, asks, cache, ClientSettings(threads=64), api_key=server.api_key)
        asked = time.perf_counter()
        stats = counters(server.url)
    cache.close()
    return {"answers": answers, "asks": asks, "total_s": time.perf_counter() - start, "startup_s": ready - start,
            "asking_s": asked - ready, "prompt_tokens": stats["vllm:prompt_tokens_total"],
            "cached_tokens": stats["vllm:prefix_cache_hits_total"],
            "invalid": sum(answers[a.key].answer == INVALID for a in asks)}


def summary(r: dict, pairs: int) -> dict:
    return {
        "answers_per_s": pairs / r["total_s"],
        "answers_per_s_excluding_startup": pairs / r["asking_s"],
        "wall_s": round(r["total_s"], 1),
        "server_startup_s": round(r["startup_s"], 1),
        "invalid_answers": r["invalid"],
        "prompt_tokens_per_pair": r["prompt_tokens"] / pairs,
        "prompt_tokens_computed_per_pair": (r["prompt_tokens"] - r["cached_tokens"]) / pairs,
        "computed_share": (r["prompt_tokens"] - r["cached_tokens"]) / r["prompt_tokens"],
    }


def load_config(paths: list[str]) -> dict:
    """config/config.yaml, updated by each further file as Snakemake's --configfile does (nested keys merged)."""
    def merge(into: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    config: dict = {}
    for path in ["config/config.yaml", *paths]:
        merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", choices=("recipe", "prefix"), default="recipe")
    parser.add_argument("--adapters", type=int, help="how many adapters (default: all of the config's bags)")
    parser.add_argument("--free-tokens", type=int, default=4)
    parser.add_argument("--config", nargs="*", default=[], help="config files over config/config.yaml, as given to snakemake --configfile")
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args()
    config = load_config(args.config)
    serve = ServeSettings(**config["serve"])
    base = model_dir(config["base_model"])
    questions = read_questions("results/data/test.jsonl")
    n_adapters = args.adapters or config["bagging"]["n_subsets"]
    adapters = {adapter_name(k): f"results/adapters/{k}" for k in range(n_adapters)}
    pairs = len(adapters) * len(questions)
    report: dict = {"compare": args.compare, "adapters": len(adapters), "questions": len(questions), "pairs": pairs,
                    "puzzles": len({q["puzzle_id"] for q in questions}), "sources": [s["path"] for s in config["sources"]]}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.compare == "recipe":
            totals = {"total_s": 0.0, "startup_s": 0.0, "asking_s": 0.0, "prompt_tokens": 0.0, "cached_tokens": 0.0, "invalid": 0}
            for name, path in adapters.items():
                part = run(serve, base, {name: path}, questions, args.free_tokens, tmp, "recipe")
                for key in totals:
                    totals[key] += part[key]
            runs = {"recipe": totals, "ours": run(serve, base, adapters, questions, 0, tmp, "ours")}
        else:
            before = dataclasses.replace(serve, block_size=None)
            runs = {"before": run(before, base, adapters, questions, 0, tmp, "before"),
                    "after": run(serve, base, adapters, questions, 0, tmp, "after")}
            report["block_size"] = {"before": "vLLM default (128 on CPU)", "after": serve.block_size}
            a, b = runs["before"]["answers"], runs["after"]["answers"]
            report["same_answers"] = sum(a[x.key].answer == b[y.key].answer for x, y in zip(runs["before"]["asks"], runs["after"]["asks"]))
    labels = list(runs)
    for label in labels:
        report[label] = summary(runs[label], pairs)
    first, second = (report[label] for label in labels)
    report["ratio_answers_per_s"] = second["answers_per_s"] / first["answers_per_s"]
    report["ratio_excluding_startup"] = second["answers_per_s_excluding_startup"] / first["answers_per_s_excluding_startup"]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
