"""Stage 5, serving (recipe step 4): vLLM servers with the adapters on them; round-1 predictions and round-2 samples.

Phase ``predict`` asks every adapter every test question once, greedily
(temperature 0). It is split by adapter into ``serve.shards`` jobs
(:func:`shard_adapters`), each with its own server, which Snakemake runs side
by side on one host's GPUs or SLURM places on any nodes; each writes its
adapters' files into ``results/predict_shards/{shard}/``
(:func:`predict_shard`), and rule ``link_prediction`` puts them at
``results/predictions/{k}.jsonl`` (:func:`link_prediction`). Phase ``revote``
(one server: it asks only the few questions without a strict round-1
majority, and a second server start would cost more than it saves) asks
them again: every adapter, ``vote.round2_samples`` samples each at
``vote.round2_temperature``, each with its own fixed seed (so a rerun gives
the same samples), and writes ``results/votes/round2.jsonl``. Every phase
reads the whole answer cache ``results/cache/`` and appends to its own file
of it (:class:`logivote.serving.client.AnswerCache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.contracts import EvalPrediction, Prediction, Question, Round1Row, Round2Row, ServingRecord, adapter_name
from ..data.flatten import read_questions
from ..data.jsonl import atomic_write_jsonl, atomic_write_text, link_or_copy, read_rows, sha256_file
from ..ensemble.voting import VoteSettings, needs_revote, tally_round1, tally_round2
from ..gpus import gpu_slots
from .client import AnswerCache, Ask, ClientSettings, ask_all
from .server import ServerError, ServerSpec, VllmOptions, VllmServer
from .serving_path import ServingPath, choose, served_model, server_env, without_quantization_flag

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeSettings(VllmOptions):
    """Config key ``serve`` (config/README.md): vLLM's options (:class:`logivote.serving.server.VllmOptions`) and how the
    workflow runs its servers."""

    gpus: int = 0
    threads: int = 2
    mem_mb: int = 4000  # host memory of the server job: scheduling only (the rules' resources)
    shards: int = 1  # predict jobs (the workflow's; one server each)
    weights: str = "auto"  # a GPTQ-Int4 base: auto | int4 | dequantize | fp8 (logivote.serving.serving_path)
    dequantized_dtype: str = "float32"
    cpu_build: str = "auto"  # auto | avx2: serve as on an AVX2-only CPU

    def path(self, base_dir: str) -> ServingPath:
        """Which form of ``base_dir`` the server serves, decided before it starts (:func:`logivote.serving.serving_path.choose`)."""
        return choose(base_dir, self.weights, self.dtype, self.dequantized_dtype, self.gpus, self.cpu_build)

    def spec(self, model_dir: str, adapters: Mapping[str, str], path: ServingPath | None = None) -> ServerSpec:
        """How to start the server for ``model_dir`` (the folder ``path`` serves; without ``path``, as configured)."""
        env = {k: str(v) for k, v in self.env.items()}
        env.update(server_env(self.cpu_build))
        extra = list(self.extra_args) if path is None or path.weights in ("int4", "float") else without_quantization_flag(list(self.extra_args))
        options = {**self.vllm_options(), "dtype": path.dtype if path else self.dtype, "extra_args": extra, "env": env}
        return ServerSpec(model=model_dir, adapters=adapters, **options)


def _adapter_fingerprints(base_dir: str, adapters: Mapping[str, str], path: ServingPath) -> dict[str, str]:
    """What identifies an adapter's answers: the base, the adapter's weights and the serving path (int4 and dequantized differ)."""
    base = sha256_file(Path(base_dir) / "config.json") + path.tag
    return {name: hashlib.sha256((base + sha256_file(Path(path) / "adapter_model.safetensors")).encode()).hexdigest()
            for name, path in adapters.items()}


def prefix_order(asks: Sequence[Ask]) -> list[Ask]:
    """The order requests are sent in: adapter by adapter, and within an adapter puzzle by puzzle.

    The KV cache is per adapter (the LoRA weights change the keys and values), and every question
    of a puzzle starts with the same system turn, instruction and puzzle text
    (:func:`logivote.data.prompt.user_prompt`). Sending one adapter's questions of one puzzle close
    together lets vLLM's prefix cache serve the shared part of all but the first from memory.
    Stable: adapters and puzzles keep their first-seen order, a question's samples stay together.
    """
    adapter_rank: dict[str, int] = {}
    puzzle_rank: dict[str, int] = {}
    for ask in asks:
        adapter_rank.setdefault(ask.model, len(adapter_rank))
        puzzle_rank.setdefault(ask.question["puzzle_id"], len(puzzle_rank))
    return sorted(asks, key=lambda a: (adapter_rank[a.model], puzzle_rank[a.question["puzzle_id"]], a.question["question_index"], a.sample))


class PromptTooLong(ValueError):
    """Some prompts do not fit ``serve.max_model_len``: raised before any server starts."""


def check_prompt_lengths(base_dir: str, groups: Mapping[str, Sequence[Question]], max_model_len: int, reply_tokens: int = 1) -> None:
    """Every prompt plus its reply must fit the server's context; say which do not, by group (test, dev,
    out-of-bag), with their token counts and the key to raise, before anything is asked. The rules run it while their
    server starts (:func:`_serve_and_ask`): a failure stops that server within seconds of its start."""
    from transformers import AutoTokenizer

    from ..data.prompt import prompt_lengths

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    problems = []
    for label, questions in groups.items():
        unique = list({q["qid"]: q for q in questions}.values())
        over = {qid: n for qid, n in prompt_lengths(tokenizer, unique).items() if n + reply_tokens > max_model_len}
        if over:
            shown = ", ".join(f"{qid} ({n} tokens)" for qid, n in sorted(over.items(), key=lambda kv: -kv[1])[:10])
            more = f" and {len(over) - 10} more" if len(over) > 10 else ""
            problems.append(f"{len(over)} {label} question(s): {shown}{more}")
    if problems:
        raise PromptTooLong(
            f"prompts longer than serve.max_model_len {max_model_len} allows ({reply_tokens} token(s) kept for the answer): "
            + "; ".join(problems) + ". Raise serve.max_model_len in your config (up to the base model's "
            "max_position_embeddings), or shorten or remove these questions. Nothing was asked.")


def _serve_and_ask(base_dir: str, adapters: Mapping[str, str], asks: Sequence[Ask], cache_path: str,
                   serve: ServeSettings, path: ServingPath, client: ClientSettings, server_log: str, desc: str,
                   then: Callable[[Mapping[str, Any]], Sequence[Ask]] | None = None,
                   check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Start the server only if something is missing from the cache; answers by ask key. ``then``: the asks that follow
    from these answers (round 2 asked ahead), asked of the same server; their answers only go to the cache.
    ``check``: run only where a server starts, while it starts (``VllmServer``'s ``while_starting``: on a 2-core machine
    the prompt check's tokenizer load took 3 s on the critical path before the server's start); raising, it stops the
    server and nothing is asked."""
    asks = prefix_order(asks)
    cache = AnswerCache(cache_path)
    try:
        answers: dict[str, Any] | None = None
        follow: list[Ask] | None = None
        if all(ask.key in cache.entries for ask in asks):
            answers = ask_all("", asks, cache, client, desc=desc)
            follow = prefix_order(then(answers)) if then is not None else []
            if all(ask.key in cache.entries for ask in follow):
                log.info("all %d answers are cached: no server needed", len(asks) + len(follow))
                return answers
        try:
            with gpu_slots(serve.gpus), served_model(base_dir, path) as model_dir, \
                    VllmServer(serve.spec(model_dir, adapters, path), server_log, while_starting=check) as server:
                if answers is None:
                    answers = ask_all(server.url, asks, cache, client, alive=server.check_alive, desc=desc, api_key=server.api_key)
                if then is not None:
                    follow = follow if follow is not None else prefix_order(then(answers))
                    ask_all(server.url, follow, cache, client, alive=server.check_alive, desc="round 2", api_key=server.api_key)
                return answers
        except ServerError as err:
            if path.weights == "int4" and path.kernels == "_C_AVX2":  # only where serve.weights: int4 forced it
                raise ServerError(f"{err}\nvllm-cpu's AVX2 build has no GPTQ-Int4 kernel: set serve.weights to auto or "
                                  "dequantize to serve this base dequantized") from err
            raise
    finally:
        cache.close()


@dataclass(frozen=True)
class EvalFiles:
    """What the predict phase also asks when ``evaluation.enabled``: out-of-bag and dev questions, with gold answers."""

    pool: str  # results/data/pool.jsonl: the questions the bags were drawn from
    dev: str  # results/data/dev.jsonl
    oob: Mapping[int, str]  # adapter -> results/subsets/{k}.oob.txt
    oob_out: Mapping[int, str]  # adapter -> results/eval/oob/{k}.jsonl
    dev_out: Mapping[int, str]  # adapter -> results/eval/dev/{k}.jsonl


@dataclass(frozen=True)
class EvalInputs:
    """What a predict shard reads to ask out-of-bag and dev questions too (``evaluation.enabled``)."""

    pool: str  # results/data/pool.jsonl
    dev: str  # results/data/dev.jsonl
    oob: Mapping[int, str]  # adapter -> results/subsets/{k}.oob.txt


def _write_eval(path: str, asks: Sequence[Ask], answers: Mapping[str, Any]) -> None:
    rows = [EvalPrediction(qid=a.question["qid"], answer=answers[a.key].answer, logprob=answers[a.key].logprob,
                           gold=str(a.question["answer"]), n_options=len(a.question["options"])) for a in asks]
    atomic_write_jsonl(path, rows)


def serving_path(base_dir: str, settings: ServeSettings) -> ServingPath:
    """The phase's serving path, decided and said in one log line before any server starts."""
    path = settings.path(base_dir)
    log.info("serving path: %s", path.describe())
    return path


def predict(base_dir: str, adapter_dirs: Mapping[int, str], test_path: str, out_paths: Mapping[int, str], cache_path: str,
            serve: dict[str, Any], client: dict[str, Any], server_log: str, evaluation: EvalFiles | None = None,
            serving_out: str | None = None, round2: dict[str, Any] | None = None) -> None:
    """Rule ``predict``: every adapter answers every test question; one prediction file per adapter.

    With ``evaluation``, the same server phase also asks each adapter its out-of-bag questions and
    every dev question (greedy), and writes them with their gold letters to ``results/eval/``.
    ``serving_out`` (``results/predictions/serving.json``) records the serving path the answers came from.
    ``round2`` (config ``vote``; only where this phase holds every adapter, ``serve.shards: 1``): the server then
    also asks round 2 ahead, the very asks rule ``revote`` makes (:func:`round2_asks`) for the test and dev questions
    whose round-1 vote has no strict majority, into the answer cache, so that ``revote`` finds them all there and
    starts no second server. The outputs are the same files as without.
    """
    from ..data.bagging import read_oob

    settings = ServeSettings(**serve)
    path = serving_path(base_dir, settings)
    questions = read_questions(test_path)
    adapters = {adapter_name(k): d for k, d in adapter_dirs.items()}
    prints = _adapter_fingerprints(base_dir, adapters, path)
    asks = {k: [Ask(adapter_name(k), prints[adapter_name(k)], q) for q in questions] for k in adapter_dirs}
    oob_asks: dict[int, list[Ask]] = {}
    dev_asks: dict[int, list[Ask]] = {}
    dev: list[Question] = []
    if evaluation is not None:
        pool = {q["qid"]: q for q in read_questions(evaluation.pool)}
        dev = read_questions(evaluation.dev)
        for k in adapter_dirs:
            name = adapter_name(k)
            oob_asks[k] = [Ask(name, prints[name], pool[qid]) for qid in read_oob(evaluation.oob[k])]
            dev_asks[k] = [Ask(name, prints[name], q) for q in dev]
        log.info("evaluation: %d out-of-bag and %d dev requests in the same server phase",
                 sum(map(len, oob_asks.values())), sum(map(len, dev_asks.values())))
    everything = [a for group in (asks, oob_asks, dev_asks) for per in group.values() for a in per]
    lengths = {"test": questions, "out-of-bag": [a.question for per in oob_asks.values() for a in per],
               "dev": [a.question for per in dev_asks.values() for a in per]}
    then = None
    if round2 is not None:
        def then(answers: Mapping[str, Any]) -> list[Ask]:
            def needing(groups: Mapping[int, Sequence[Ask]], among: Sequence[Question]) -> list[str]:
                table = {adapter_name(k): {a.question["qid"]: answers[a.key].answer for a in per} for k, per in groups.items()}
                return needs_revote(tally_round1(table, among)) if groups else []

            qids, dev_qids = needing(asks, questions), needing(dev_asks, dev)
            log.info("round 2 asked ahead in this server phase: %d test and %d dev questions without a strict majority",
                     len(qids), len(dev_qids))
            by_id = {q["qid"]: q for q in [*questions, *dev]}
            return round2_asks(adapters, prints, by_id, [*qids, *dev_qids], VoteSettings(**round2))

    answers = _serve_and_ask(base_dir, adapters, everything, cache_path, settings, path, ClientSettings(**client), server_log,
                             "predict", then, check=lambda: check_prompt_lengths(base_dir, lengths, settings.max_model_len))
    if evaluation is not None:
        for k in adapter_dirs:
            _write_eval(evaluation.oob_out[k], oob_asks[k], answers)
            _write_eval(evaluation.dev_out[k], dev_asks[k], answers)
    for k, per_adapter in asks.items():
        rows = [Prediction(qid=a.question["qid"], answer=answers[a.key].answer, logprob=answers[a.key].logprob) for a in per_adapter]
        atomic_write_jsonl(out_paths[k], rows)
        invalid = sum(r["answer"] == "invalid" for r in rows)
        log.info("adapter %d: %d answers (%d invalid) -> %s", k, len(rows), invalid, out_paths[k])
    if serving_out:
        atomic_write_text(serving_out, json.dumps(ServingRecord(**path.record()), indent=1) + "\n")


def shard_adapters(shard: int, n_adapters: int, shards: int) -> list[int]:
    """The adapters predict shard ``shard`` of ``shards`` asks: consecutive ones, shard sizes differing by one at most.

    The split is by adapter: vLLM's prefix cache is per adapter, so a shard reuses a puzzle's shared prompt
    exactly as one server did, loads only its own adapters, and writes its adapters' files whole.
    """
    if not 0 <= shard < shards <= n_adapters:
        raise ValueError(f"shard {shard} of {shards} over {n_adapters} adapters: serve.shards must be 1..{n_adapters}")
    size, extra = divmod(n_adapters, shards)
    start = shard * size + min(shard, extra)
    return list(range(start, start + size + (shard < extra)))


@dataclass(frozen=True)
class ShardLayout:
    """What one predict shard writes into its folder ``results/predict_shards/{shard}/`` (:mod:`logivote.data.contracts`)."""

    root: Path

    def prediction(self, k: int) -> Path:
        return self.root / "predictions" / f"{k}.jsonl"

    def oob(self, k: int) -> Path:
        return self.root / "eval" / "oob" / f"{k}.jsonl"

    def dev(self, k: int) -> Path:
        return self.root / "eval" / "dev" / f"{k}.jsonl"

    @property
    def serving(self) -> Path:
        return self.root / "serving.json"


def predict_shard(*, base_dir: str, adapter_dirs: Mapping[int, str], test_path: str, shard_dir: str, cache_path: str,
                  serve: dict[str, Any], client: dict[str, Any], server_log: str, evaluation: EvalInputs | None = None,
                  round2: dict[str, Any] | None = None) -> None:
    """Rule ``predict``: one shard of the predict phase (its adapters, one server) into ``shard_dir``, written whole or not at all."""
    from ..data.jsonl import atomic_directory

    with atomic_directory(shard_dir) as tmp:
        layout = ShardLayout(tmp)
        for k in adapter_dirs:
            for path in (layout.prediction(k), layout.oob(k), layout.dev(k)):
                path.parent.mkdir(parents=True, exist_ok=True)
        files = None
        if evaluation is not None:
            files = EvalFiles(pool=evaluation.pool, dev=evaluation.dev, oob=evaluation.oob,
                              oob_out={k: str(layout.oob(k)) for k in adapter_dirs},
                              dev_out={k: str(layout.dev(k)) for k in adapter_dirs})
        predict(base_dir, adapter_dirs, test_path, {k: str(layout.prediction(k)) for k in adapter_dirs}, cache_path, serve,
                client, server_log, files, serving_out=str(layout.serving), round2=round2)


def link_prediction(*, shard_dir: str, k: int, prediction: str, oob: str | None = None, dev: str | None = None) -> None:
    """Rule ``link_prediction``: adapter ``k``'s files of its shard's folder at their places in ``results/`` (hard links, or copies)."""
    layout = ShardLayout(Path(shard_dir))
    for source, target in ((layout.prediction(k), prediction), (layout.oob(k), oob), (layout.dev(k), dev)):
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).unlink(missing_ok=True)
            link_or_copy(source, target)


def merge_serving(shard_dirs: Sequence[str], out_path: str) -> ServingRecord:
    """Rule ``serving_record``: the predict phase's serving record; shards that served differently are named, not hidden."""
    records = [json.loads(ShardLayout(Path(d)).serving.read_text()) for d in shard_dirs]
    merged: ServingRecord = records[0]
    if any(r != records[0] for r in records[1:]):
        merged = ServingRecord(weights="mixed", dtype="mixed", kernels="mixed",
                               reason="; ".join(f"shard {i}: {r['weights']} {r['dtype']} on {r['kernels']} ({r['reason']})"
                                                for i, r in enumerate(records)))
        log.warning("the predict shards served differently: %s", merged["reason"])
    atomic_write_text(out_path, json.dumps(merged, indent=1) + "\n")
    return merged


def sample_seed(base_seed: int, model: str, qid: str, sample: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{model}:{qid}:{sample}".encode()).hexdigest()
    return int(digest[:8], 16)


def round2_asks(adapters: Mapping[str, str], prints: Mapping[str, str], by_id: Mapping[str, Question], qids: Sequence[str],
                vote: VoteSettings) -> list[Ask]:
    """Round 2's asks (config ``vote``): ``round2_samples`` samples at ``round2_temperature`` of each question by every adapter,
    each with its own seed (:func:`sample_seed`); asked by ``revote``, or ahead by ``predict`` with the same keys."""
    return [Ask(name, prints[name], by_id[qid], sample=s, temperature=vote.round2_temperature, seed=sample_seed(vote.seed, name, qid, s))
            for name in adapters for qid in qids for s in range(vote.round2_samples)]


@dataclass(frozen=True)
class DevRound2:
    """Round 2 on the dev questions (``evaluation.enabled``), so that the evaluation can say what round 2 is worth."""

    dev: str  # results/data/dev.jsonl
    greedy: Mapping[int, str]  # adapter -> results/eval/dev/{k}.jsonl (round 1 on dev)
    out: str  # results/eval/dev_round2.jsonl


def dev_round1(dev_questions: Sequence[Any], greedy: Mapping[int, str]) -> list[Round1Row]:
    """The round-1 table of the dev questions, from each adapter's greedy dev answers."""
    table = {adapter_name(k): {row["qid"]: row["answer"] for row in read_rows(path)} for k, path in greedy.items()}
    return tally_round1(table, dev_questions)


def revote(*, base_dir: str, adapter_dirs: Mapping[int, str], test_path: str, round1_path: str, out_path: str, cache_path: str,
           serve: dict[str, Any], client: dict[str, Any], vote_settings: dict[str, Any], server_log: str,
           dev: DevRound2 | None = None) -> list[Round2Row]:
    """Rule ``revote``: re-ask the questions without a strict majority; the round-2 table.

    With ``dev``, the dev questions without a strict round-1 majority are sampled the same way in the
    same server phase, and their round-2 table goes to ``dev.out``.
    """
    questions = read_questions(test_path)
    qids = needs_revote(read_rows(round1_path))  # type: ignore[arg-type]
    adapters = {adapter_name(k): d for k, d in adapter_dirs.items()}
    dev_questions = read_questions(dev.dev) if dev else []
    dev_qids = needs_revote(dev_round1(dev_questions, dev.greedy)) if dev else []
    by_id = {q["qid"]: q for q in [*questions, *dev_questions]}
    asks: list[Ask] = []
    if qids or dev_qids:
        settings = ServeSettings(**serve)
        path = serving_path(base_dir, settings)
        prints = _adapter_fingerprints(base_dir, adapters, path)
        asks = round2_asks(adapters, prints, by_id, [*qids, *dev_qids], VoteSettings(**vote_settings))
        # with round 2 asked ahead in predict's server phase (serve.shards: 1) every answer is cached and no server
        # starts: no prompt check then (it loads the tokenizer: measured, the rule took 4.8 s with it and 1.6 s without)
        lengths = {"test": [by_id[q] for q in qids], "dev": [by_id[q] for q in dev_qids]}
        answers = _serve_and_ask(base_dir, adapters, asks, cache_path, settings, path, ClientSettings(**client), server_log, "revote",
                                 check=lambda: check_prompt_lengths(base_dir, lengths, settings.max_model_len))
    samples: dict[str, dict[str, list[str]]] = {name: {} for name in adapters}
    for ask in asks:
        samples[ask.model].setdefault(ask.question["qid"], []).append(answers[ask.key].answer)
    rows = tally_round2(samples, questions, qids)
    if dev:
        atomic_write_jsonl(dev.out, tally_round2(samples, dev_questions, dev_qids))
        log.info("dev round 2: %d of %d dev questions re-asked", len(dev_qids), len(dev_questions))
    atomic_write_jsonl(out_path, rows)
    log.info("round 2: %d questions re-asked, %d samples", len(qids), len(asks))
    return rows
