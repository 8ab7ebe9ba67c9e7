"""A brief pre-training of the tiny base on generated puzzles, so that it starts knowing the format.

A random tiny model answers with a letter prior and nothing more, and LoRA adapters over it learn little
else in the recipe's 2 epochs. :func:`pretrain` trains every weight of the float tiny model on puzzles made
fresh by :mod:`logivote.data.sample_data` from their own seed (never the sample files), on the training view of
:func:`logivote.data.prompt.encode_example` (loss on the answer letter and end of turn only), then writes it back.
Config key ``base_model.tiny.pretrain`` (config/README.md); with ``steps: 0`` nothing is done.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..data.contracts import Question

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    """Config keys ``base_model.tiny.pretrain.*``."""

    steps: int = 0
    batch_size: int = 8
    learning_rate: float = 1e-3
    kinds: list[str] = field(default_factory=lambda: ["weather"])  # sample_data.KIND_NAMES
    puzzles: int = 2000
    seed: int = 7
    lr_schedule: str = "constant"  # constant, linear or cosine (to 0 at the last step)


def generated_questions(settings: PretrainSettings, unseen: Collection[str] = ()) -> list[Question]:
    """The pre-training questions: flattened puzzles of ``settings.kinds``, from ``settings.seed``, less any
    puzzle whose text is in ``unseen`` (a week of weather repeats by chance: the workflow's own puzzles, dev
    included, must stay unseen)."""
    from ..data.flatten import Source, parse_puzzle
    from ..data.sample_data import KIND_NAMES, make_puzzles

    unknown = sorted(set(settings.kinds) - set(KIND_NAMES))
    if unknown:
        raise ValueError(f"base_model.tiny.pretrain.kinds: unknown {unknown}; known: {sorted(KIND_NAMES)}")
    puzzles = make_puzzles("pretrain", settings.puzzles, settings.seed, True, [KIND_NAMES[k] for k in settings.kinds])
    unseen = set(unseen)
    source = Source("pretrain", "<generated>", "train")  # flattened as the workflow's own files are
    return [q for line, p in enumerate(puzzles, 1) if p["problem"] not in unseen for q in parse_puzzle(p, source, line)]


SCHEDULES = ("constant", "linear", "cosine")


def lr_scheduler(optimizer: Any, schedule: str, steps: int) -> Any:
    """transformers' ``get_scheduler`` (training's schedules too): ``constant`` keeps the rate; ``linear`` and
    ``cosine`` fall from it to 0 over ``steps``, with no warm-up."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"base_model.tiny.pretrain.lr_schedule: {schedule!r}; known: {', '.join(SCHEDULES)}")
    return get_scheduler(schedule, optimizer, num_warmup_steps=0, num_training_steps=steps)


def pretrain(model_dir: str | os.PathLike[str], settings: PretrainSettings, unseen: Collection[str] = ()) -> list[float]:
    """Train the float model in ``model_dir`` in place for ``settings.steps`` steps on :func:`generated_questions`;
    returns the step losses."""
    if settings.steps <= 0:
        return []
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.prompt import encode_example, labelled_batch

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = [e for q in generated_questions(settings, unseen) if (e := encode_example(tokenizer, q, 4096)) is not None]
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    scheduler = lr_scheduler(optimizer, settings.lr_schedule, settings.steps)
    pad = tokenizer.pad_token_id
    body, head = model.base_model, model.get_output_embeddings()
    losses: list[float] = []
    model.train()
    started = time.monotonic()
    for step in range(settings.steps):
        rows = [examples[i] for i in rng.sample(range(len(examples)), settings.batch_size)]
        ids, mask, row, col, targets = labelled_batch(rows, pad, "cpu")
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        # the head at the labelled positions only, as in training: the mean over every labelled token
        loss = torch.nn.functional.cross_entropy(head(hidden[row, col]), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pre-training: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 200 == 0 or step + 1 == settings.steps:
            window = losses[-200:]
            log.info("pre-training step %d/%d: loss %.3f (%.0f s)", step + 1, settings.steps, sum(window) / len(window),
                     time.monotonic() - started)
    model.save_pretrained(model_dir, safe_serialization=True)
    log.info("pre-trained the tiny base on %d generated questions (%s) for %d steps of %d in %.0f s", len(examples),
             ",".join(settings.kinds), settings.steps, settings.batch_size, time.monotonic() - started)
    return losses
