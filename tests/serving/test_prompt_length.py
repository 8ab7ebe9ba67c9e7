"""Prompts longer than serve.max_model_len are refused before anything is asked, naming the questions, their token
counts, the group they are asked in and the key to raise; the check runs while the server starts and stops it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from logivote.base.tiny_model import train_tokenizer  # noqa: E402
from logivote.data.flatten import Source, flatten  # noqa: E402
from logivote.data.prompt import prompt_lengths  # noqa: E402
from logivote.serving.inference import PromptTooLong, check_prompt_lengths, predict  # noqa: E402

from ..conftest import REPO, processes_in_group, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with only what the check reads: the tokenizer (and config.json for fingerprints)."""
    folder = tmp_path_factory.mktemp("base")
    train_tokenizer(["逻辑推理 puzzle text with options"] * 50, 400).save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    return folder


def question(qid: str, problem: str) -> dict:
    return {"qid": qid, "puzzle_id": qid.split("#")[0], "question_index": 0, "source": "t", "problem": problem,
            "question": "哪一个？", "options": ["甲", "乙"], "answer": None}


def test_short_prompts_pass_and_long_ones_are_named_with_their_lengths(base: Path) -> None:
    from transformers import AutoTokenizer

    short, long = question("p1#0", "短。"), question("p2#0", "很长的题目。" * 800)
    lengths = prompt_lengths(AutoTokenizer.from_pretrained(base), [short, long])
    check_prompt_lengths(str(base), {"test": [short]}, max_model_len=lengths["p1#0"] + 1)  # prompt + 1 answer token fits
    with pytest.raises(PromptTooLong) as info:
        check_prompt_lengths(str(base), {"test": [short, long], "dev": [long], "out-of-bag": [short]}, max_model_len=lengths["p1#0"] + 1)
    message = str(info.value)
    assert f"1 test question(s): p2#0 ({lengths['p2#0']} tokens)" in message
    assert f"1 dev question(s): p2#0 ({lengths['p2#0']} tokens)" in message
    assert "out-of-bag" not in message and "p1#0" not in message
    assert "Raise serve.max_model_len" in message and "Nothing was asked" in message


def test_predict_stops_its_starting_server_and_asks_nothing(base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The case seen by a user: one test puzzle with an 8 200-character problem in the sample test file. The check
    runs while the server starts (it would fail at once here on a flag vLLM does not know): the check's error is the
    one raised, the server's process group is gone and no prediction is written."""
    raw = [json.loads(line) for line in (REPO / "resources/data/sample_test.jsonl").read_text().splitlines()]
    raw.append({"id": "huge", "problem": "甲" * 8200, "questions": [{"question": "谁？", "options": ["甲", "乙"]}]})
    write_jsonl(tmp_path / "raw_test.jsonl", raw)
    flatten([Source("train", str(REPO / "resources/data/sample_train.jsonl"), "train"), Source("test", str(tmp_path / "raw_test.jsonl"), "test")],
            tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"not read")
    serve = {"max_model_len": 2048, "extra_args": ["--this-server-must-not-start"]}
    with caplog.at_level(logging.INFO, logger="logivote.serving"), \
            pytest.raises(PromptTooLong, match=r"serve\.max_model_len 2048 .*1 test question\(s\): huge#0 \(\d+ tokens\)"):
        predict(str(base), {0: str(adapter)}, str(tmp_path / "test.jsonl"), {0: str(tmp_path / "pred.jsonl")},
                str(tmp_path / "cache.jsonl"), serve, {}, str(tmp_path / "server.log"))
    (pid,) = map(int, re.findall(r"started vLLM server pid (\d+)", caplog.text))
    assert f"vLLM server pid {pid} stopped" in caplog.text and not processes_in_group(pid)
    assert not (tmp_path / "pred.jsonl").exists() and not ((cache := tmp_path / "cache.jsonl").exists() and cache.read_text())
