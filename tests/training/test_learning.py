"""Training teaches: one adapter learns a toy task its base cannot do, over the float and the GPTQ-Int4 tiny base.

The toy task is learnable by a tiny random model in a few hundred steps: each puzzle names one of four
animals, and the answer is that animal's letter among the four options (always in the same order). The
letters are balanced, so the most frequent letter and the base model without an adapter sit near 25 %.
An adapter trained on 96 such questions (2 epochs, batch 1) must answer held-out ones far better. This is the guard for any
rewrite of the training step: a wrong label shift, gradients zeroed by a kernel, LoRA weights not
applied, or a packing bug leave the adapter at the base's accuracy, and the test fails.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # python -m pytest -m "not slow" leaves it out (README: Tests)

torch = pytest.importorskip("torch")
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from logivote.base.models import prepare_base_model  # noqa: E402
from logivote.base.quantize import gptq_load_kwargs  # noqa: E402
from logivote.data.contracts import letters_for  # noqa: E402
from logivote.data.flatten import Source, flatten, read_questions  # noqa: E402
from logivote.data.prompt import letter_choice  # noqa: E402
from logivote.training.loop import train_adapters  # noqa: E402
from logivote.training.settings import TrainSettings  # noqa: E402

ANIMALS = ["cat", "dog", "fox", "owl"]
SETTINGS = TrainSettings(lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=2e-3, epochs=2, save_steps=1000,
                         logging_steps=20)


def toy_puzzles(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    puzzles = []
    for i in range(n):
        k = i % len(ANIMALS)
        colour = rng.choice(["red", "blue", "green", "grey", "white"])
        # the animal is named many times: even near-uniform attention of a random tiny model carries it to the answer
        puzzles.append({"id": f"toy{seed}-{i}", "problem": " ".join([f"In the {colour} house lives a {ANIMALS[k]}."] * 8),
                        "questions": [{"question": "Which animal lives in the house?", "options": ANIMALS,
                                       "answer": letters_for(4)[k]}]})
    rng.shuffle(puzzles)
    return puzzles


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    for name, n, seed in (("train", 96, 1), ("test", 40, 2)):
        (root / f"{name}_raw.jsonl").write_text("".join(json.dumps(p) + "\n" for p in toy_puzzles(n, seed)))
    flatten([Source("train", str(root / "train_raw.jsonl"), "train"), Source("held", str(root / "test_raw.jsonl"), "train")],
            root / "train.jsonl", root / "unused_test.jsonl")
    questions = read_questions(root / "train.jsonl")
    for name, part in (("bag", [q for q in questions if q["source"] == "train"]), ("held", [q for q in questions if q["source"] == "held"])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in part))
    return root


def accuracy(base: Path, adapter: Path | None, questions: list[dict]) -> float:
    """Greedy choice among the question's option letters at the answer position, as the server's structured output picks."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu", **gptq_load_kwargs(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return sum(letter_choice(model, tokenizer, q) == q["answer"] for q in questions) / len(questions)


@pytest.mark.parametrize("quantize", ["none", "gptq-int4"])
def test_an_adapter_learns_a_toy_task_its_base_cannot_do(toy: Path, tmp_path: Path, quantize: str) -> None:
    if quantize != "none":
        pytest.importorskip("gptqmodel", reason="needs gptqmodel (bash setup.sh)")
    base = tmp_path / "base"
    # initializer_range 0.1: at transformers' 0.02 the tiny model's logits are too flat for the loss to fall far
    # (it learns the toy task all the same, but its loss stays near log(vocab) - 2.6; tiny_model.TinyShape)
    prepare_base_model(spec={"source": "tiny", "tiny": {"quantize": quantize, "group_size": 128, "calibration_prompts": 32,
                                                        "initializer_range": 0.1}},
                       question_files=[str(toy / "bag.jsonl"), str(toy / "held.jsonl")], out_dir=str(base))
    losses: list[float] = []
    train_adapters(base, {0: toy / "bag.jsonl"}, {0: tmp_path / "adapter"}, tmp_path / "ckpt", SETTINGS,
                   on_step=lambda stats: losses.append(stats.losses[0]))
    assert len(losses) == 2 * 96
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    held = read_questions(toy / "held.jsonl")
    before, after = accuracy(base, None, held), accuracy(base, tmp_path / "adapter", held)
    print(f"{quantize}: loss {first:.3f} -> {last:.3f}; held-out accuracy {before:.2f} (base) -> {after:.2f} (adapter)")
    assert last < 0.25 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert after >= 0.9, f"the adapter answers {after:.0%} of held-out toy questions (base {before:.0%}): training taught nothing"
    assert after >= before + 0.4
