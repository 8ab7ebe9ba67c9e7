"""Benchmark (not a test): where the vote's lead over the mean adapter comes from, by puzzle kind and question.

Reads runs kept by ``python -m logivote.bench.seeds --keep DIR`` (``DIR/seed{seed}-{path}/``, each with
``data/dev.jsonl`` and every adapter's dev answers in ``eval/dev/{k}.jsonl``) or a workflow's own ``results/``,
groups the dev questions by the sample's puzzle kind (:func:`logivote.data.sample_data.kind_of`; ``other`` for a
problem it did not write) and the question's place in its puzzle, and prints for each group the questions, the
adapters' mean share right, the vote's accuracy and the lead in questions
(:func:`logivote.ensemble.evaluation.lead_by_group`; README "What the default shows").

    python -m logivote.bench.lead RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from logivote.data.jsonl import read_rows
from logivote.data.sample_data import kind_of
from logivote.ensemble.evaluation import answer_tables, lead_by_group


def groups(run: Path) -> dict[str, dict[str, float]]:
    """The dev questions' leads of one kept run (or ``results/``) by ``{kind}/{question_index}``."""
    group_of = {row["qid"]: f"{kind_of(row['problem']) or 'other'}/{row['question_index']}"
                for row in read_rows(run / "data" / "dev.jsonl")}
    paths = {int(p.stem): str(p) for p in (run / "eval" / "dev").glob("*.jsonl")}
    if not paths:
        raise SystemExit(f"{run}: no adapter answers in {run / 'eval' / 'dev'}")
    answers, _, gold, _ = answer_tables(paths)
    return lead_by_group(answers, gold, group_of)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="a kept run (DIR/seed7-native) or a results/ folder")
    args = parser.parse_args()
    for run in args.runs:
        lead = groups(run)
        print(f"{run}\n| kind/question | n | adapters' mean share right | vote | lead (questions) |\n|---|---|---|---|---|")
        for name, g in lead.items():
            print(f"| {name} | {g['n']} | {g['mean_share']:.2f} | {g['vote']:.2f} | {g['lead']:+.1f} |")
        print(f"| all | {sum(g['n'] for g in lead.values())} | | | {sum(g['lead'] for g in lead.values()):+.2f} |\n")


if __name__ == "__main__":
    main()
