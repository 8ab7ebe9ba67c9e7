from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from logivote.bagging import write_subset  # noqa: E402
from logivote.flatten import Source, flatten, read_questions  # noqa: E402
from logivote.prompt import encode_example  # noqa: E402
from logivote.tiny_model import TinyShape, build_from_questions  # noqa: E402
from logivote.train import TrainSettings, train_adapter  # noqa: E402

from .conftest import REPO  # noqa: E402

SETTINGS = TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-3, epochs=2, save_steps=10, logging_steps=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    data = REPO / "resources" / "data"
    flatten([Source("t", str(data / "sample_train.jsonl"), "train"), Source("s", str(data / "sample_test.jsonl"), "test")],
            root / "train.jsonl", root / "test.jsonl")
    build_from_questions([root / "train.jsonl", root / "test.jsonl"], root / "base", TinyShape())
    write_subset(root / "train.jsonl", 0, 7, 0.25, root / "subset.jsonl", root / "subset.oob.txt")  # 30 questions
    return {"root": root, "base": root / "base", "subset": root / "subset.jsonl"}


def test_tiny_model_is_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    build_from_questions([tiny["root"] / "train.jsonl", tiny["root"] / "test.jsonl"], tmp_path / "again", TinyShape())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny["base"] / name).read_bytes()
    config = (tiny["base"] / "config.json").read_text()
    assert '"head_dim": 64' in config or '"hidden_size": 128' in config


def test_loss_covers_only_the_answer_tokens(tiny: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    question = read_questions(tiny["subset"])[0]
    example = encode_example(tokenizer, question, 1800)
    assert example is not None
    answer_ids = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(answer_ids) == question["answer"] + "<|im_end|>"
    assert example["labels"][-len(answer_ids):] == example["input_ids"][-len(answer_ids):]
    assert encode_example(tokenizer, question, 20) is None


def test_adapter_reloads_with_peft_and_gives_the_same_logits(tiny: dict[str, Path], tmp_path: Path) -> None:
    trained = train_adapter(tiny["base"], tiny["subset"], tmp_path / "adapter", tmp_path / "ckpt", SETTINGS)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert not (tmp_path / "ckpt").exists()
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    example = encode_example(tokenizer, read_questions(tiny["subset"])[0], 1800)
    ids = torch.tensor([example["input_ids"]])
    trained.eval()
    with torch.no_grad():
        before = trained(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]), tmp_path / "adapter").eval()
        after = reloaded(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not torch.allclose(base, before, atol=1e-3)  # the adapter really changes the model


TRAIN_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO)
    from logivote.train import train_adapter, TrainSettings
    settings = TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-3, epochs=2, save_steps=10, logging_steps=5)
    train_adapter(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], settings)
""")


def run_training(tiny: dict[str, Path], out: Path, ckpt: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(tiny["base"]), str(tiny["subset"]), str(out), str(ckpt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_training_resumes_to_the_same_adapter(tiny: dict[str, Path], tmp_path: Path) -> None:
    reference = run_training(tiny, tmp_path / "reference", tmp_path / "ckpt_ref")
    assert reference.wait(timeout=300) == 0

    victim = run_training(tiny, tmp_path / "resumed", tmp_path / "ckpt")
    deadline = time.monotonic() + 300
    while not (tmp_path / "ckpt" / "checkpoint-30" / "trainer_state.json").exists():
        assert victim.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()  # nothing that looks done

    resumed = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tiny["base"]), str(tiny["subset"]),
                              str(tmp_path / "resumed"), str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-" in resumed.stderr
    ref = load_file(tmp_path / "reference" / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert ref.keys() == got.keys() and len(ref) > 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0, msg=name)
