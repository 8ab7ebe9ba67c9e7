"""The one prompt: what the model sees for a question, in training and in inference.

:func:`chat_messages` is the conversation (system + user turn) sent to the
model; training renders it with the tokenizer's chat template and appends the
answer letter, inference sends the same messages to vLLM's chat endpoint,
which applies the same template. :func:`encode_example` is the training view:
the loss covers only the answer tokens (the letter and the end-of-turn token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .contracts import Question, letters_for

SYSTEM = "你是一个严谨的逻辑推理助手。"
INSTRUCTION = (
    "请解答下面的逻辑推理选择题。题目给出的事实就是全部事实，没有提到的事实一律视为不成立"
    "（封闭世界假设）。只回答正确选项的字母，不要解释。"
)


def user_prompt(question: Question) -> str:
    """The user turn: instruction, puzzle, question and lettered options."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(letters_for(len(question["options"])), question["options"]))
    return f"{INSTRUCTION}\n\n### 题目\n{question['problem']}\n\n### 问题\n{question['question']}\n{options}\n\n### 答案（只写字母）"


def chat_messages(question: Question) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_prompt(question)}]


def prompt_text(tokenizer: Any, question: Question) -> str:
    """The rendered prompt, ending where the assistant's answer begins."""
    return str(tokenizer.apply_chat_template(chat_messages(question), tokenize=False, add_generation_prompt=True))


def answer_suffix(tokenizer: Any) -> str:
    """What follows the letter in a finished answer: the end-of-turn token."""
    return str(tokenizer.eos_token)


def encode_example(tokenizer: Any, question: Question, max_len: int) -> dict[str, list[int]] | None:
    """Token ids and labels for one training question; ``None`` if longer than ``max_len``.

    Prompt and target are tokenized separately and concatenated, so the answer
    tokens are exactly those of ``letter + eos`` and labels mask the prompt (-100).
    """
    if question["answer"] is None:
        raise ValueError(f"question {question['qid']} has no answer to train on")
    prompt = prompt_ids(tokenizer, question)
    target_ids = tokenizer(question["answer"] + answer_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    input_ids = prompt + list(target_ids)
    if len(input_ids) > max_len:
        return None
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [-100] * len(prompt) + list(target_ids),
    }


def prompt_ids(tokenizer: Any, question: Question) -> list[int]:
    """The token ids of the rendered prompt: what training puts before the answer, and what the server counts."""
    return list(tokenizer(prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])


def letter_choice(model: Any, tokenizer: Any, question: Question) -> str:
    """The model's most likely option letter after the rendered prompt, among the question's own letters: greedy
    decoding under the server's structured-output choice (a float or GPTQ model of transformers, or a PEFT one)."""
    import torch

    letters = letters_for(len(question["options"]))
    letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids(tokenizer, question)])).logits[0, -1, letter_ids]
    return letters[int(logits.argmax())]


def prompt_lengths(tokenizer: Any, questions: Sequence[Question]) -> dict[str, int]:
    """Tokens of each question's rendered prompt (what the server counts against its context), by qid."""
    return {q["qid"]: len(prompt_ids(tokenizer, q)) for q in questions}


def labelled_batch(examples: Sequence[dict[str, list[int]]], pad_id: int, device: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Right-padded ids and mask, and for every labelled token: its row, the position that predicts it, its id."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1
        for pos, label in enumerate(e["labels"]):
            if label != -100:
                rows.append(i)
                cols.append(pos - 1)  # the hidden state before a token predicts it
                targets.append(label)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return ids.to(device), mask.to(device), as_long(rows), as_long(cols), as_long(targets)
