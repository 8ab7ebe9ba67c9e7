"""Benchmark (not a test): which puzzle kinds a pre-trained tiny base reads, by kind and question, in float.

Builds the tiny base as rule ``base_model`` does (tokenizer from the flattened ``train.jsonl`` and ``test.jsonl`` of a
``results/data`` folder; shape and pre-training from ``base_model.tiny`` of ``--config``, the embedded default unless
told), with ``--layers``, ``--steps`` and ``--kinds`` in place of the config's where given, in float, then asks it held-out
generated puzzles of every kind (300 puzzles, seed 99, less any that pre-training saw) and takes the most likely option
letter, as vLLM's choice of letters does. Prints one JSON line: accuracy per ``{kind}/{question_index}`` and the build's seconds
(config/README.md, "Pre-training the tiny base").

    python -m logivote.bench.pretrain_kinds results/data [--layers 3] [--steps 1200] [--kinds weather,likes] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from logivote.base.models import tiny_settings
from logivote.base.pretrain import PretrainSettings, generated_questions
from logivote.base.tiny_model import build_from_questions
from logivote.data.prompt import letter_choice
from logivote.data.sample_data import KIND_NAMES, kind_of

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a results/data folder with train.jsonl and test.jsonl")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--kinds", help="comma-separated kinds of logivote.data.sample_data")
    parser.add_argument("--out", type=Path, help="append the JSON line here")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    settings, _, shape = tiny_settings(yaml.safe_load(args.config.read_text())["base_model"]["tiny"])  # float: no quantization
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    if args.kinds:
        settings = dataclasses.replace(settings, kinds=args.kinds.split(","))
    if args.layers is not None:
        shape = dataclasses.replace(shape, num_hidden_layers=args.layers)
    with tempfile.TemporaryDirectory(prefix="logivote-pretrain-kinds-") as scratch:
        model_dir = Path(scratch) / "base"
        started = time.monotonic()
        build_from_questions([args.data / "train.jsonl", args.data / "test.jsonl"], model_dir, shape, settings)
        build_s = time.monotonic() - started
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    # held out of pre-training too: a generated week of weather repeats by chance (18 of 60 did, against 2 000
    # pre-training puzzles), as generated_questions already keeps the workflow's own puzzles out of pre-training
    seen = {q["problem"] for q in generated_questions(settings)}
    held_out = generated_questions(PretrainSettings(kinds=sorted(KIND_NAMES), puzzles=300, seed=99), unseen=seen)
    right: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for question in held_out:
        tally = right[f"{kind_of(question['problem'])}/{question['question_index']}"]
        tally[0] += letter_choice(model, tokenizer, question) == question["answer"]
        tally[1] += 1
    line = json.dumps({"layers": shape.num_hidden_layers, "steps": settings.steps, "kinds": settings.kinds, "build_s": round(build_s),
                       "held_out": len(held_out),
                       **{name: round(ok / n, 2) for name, (ok, n) in sorted(right.items())}})
    print(line)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
