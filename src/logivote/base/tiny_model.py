"""A tiny Qwen2-architecture causal LM built locally: no download, fixed seed.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the rendered
prompts of the configured data, with Qwen's special tokens and a Qwen-style
chat template. Shapes keep head_dim 64, which vLLM's CPU attention supports
(head_dim 16 crashes it). The same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

from ..data.jsonl import atomic_directory
from .pretrain import PretrainSettings, pretrain

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinyShape:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    max_position_embeddings: int = 2048
    seed: int = 0
    dtype: str = "float32"
    # std of the random weights (transformers' default 0.02). With tied embeddings the head's logits scale
    # with it: at 0.02 and hidden 128 every logit stays within about ±2.6, so no adapter can make the
    # model confident (the loss floor is near log(vocab) - 2.6) and training barely moves the answers.
    initializer_range: float = 0.02


def train_tokenizer(texts: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def build_tiny_model(texts: Iterable[str], out_dir: str | os.PathLike[str], shape: TinyShape = TinyShape(),
                     pretraining: PretrainSettings | None = None, unseen: Collection[str] = ()) -> None:
    """Write a tokenizer and a randomly initialised Qwen2ForCausalLM to ``out_dir`` (atomically), pre-trained
    on generated puzzles first if ``pretraining`` has steps (:mod:`logivote.base.pretrain`), none of whose texts is
    in ``unseen``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer(texts, shape.vocab_size)
    config = Qwen2Config(
        vocab_size=max(len(tokenizer), shape.vocab_size),  # ids beyond the tokenizer stay unused, as in Qwen
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        dtype=shape.dtype,
        initializer_range=shape.initializer_range,
    )
    torch.manual_seed(shape.seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, shape.dtype))
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "logivote_tiny.json").write_text(json.dumps(shape.__dict__, indent=1) + "\n")
        if pretraining is not None and pretraining.steps > 0:
            pretrain(tmp, pretraining, unseen)
            (tmp / "logivote_pretrain.json").write_text(json.dumps(asdict(pretraining), indent=1) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny Qwen2 model: %d parameters, vocab %d, written to %s", n_params, len(tokenizer), out_dir)


def build_from_questions(question_files: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str], shape: TinyShape,
                         pretraining: PretrainSettings | None = None) -> None:
    """The rule's entry point: train the tokenizer on the prompts of the flattened questions; pre-training
    (if any) sees none of their puzzles."""
    from ..data.flatten import read_questions
    from ..data.prompt import SYSTEM, user_prompt

    texts = [SYSTEM]
    problems: set[str] = set()
    for path in question_files:
        for question in read_questions(path):
            texts.append(user_prompt(question))
            texts.extend(question["options"])
            problems.add(question["problem"])
    texts.extend("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    build_tiny_model(texts, out_dir, shape, pretraining, unseen=problems)
