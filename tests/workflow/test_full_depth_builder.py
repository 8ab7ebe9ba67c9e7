"""The random GPTQ-Int4 checkpoint builder of logivote.bench.full_depth, at a small shape on the CPU: the files
are in a layout transformers (through gptqmodel) and peft load, and the model computes finite logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gptqmodel")

from logivote.base.tiny_model import TinyShape  # noqa: E402
from logivote.bench.full_depth import build_random_gptq, write_random_adapters  # noqa: E402


def test_random_gptq_checkpoint_and_adapters_load_and_run(tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = TinyShape(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    base = build_random_gptq(tmp_path / "base", ["a puzzle about who sits where, and its options"] * 20, shape,
                             vocab_for_tokenizer=300, device="cpu")
    config = json.loads((base / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq" and config["num_hidden_layers"] == 2
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(base / index["model.layers.1.mlp.down_proj.qweight"]), "pt") as f:
        assert f.get_tensor("model.layers.1.mlp.down_proj.qweight").shape == (512 // 8, 256)  # 8 int4 per int32, input-major
        assert f.get_tensor("model.layers.1.mlp.down_proj.scales").shape == (512 // 128, 256)
    adapters = write_random_adapters(tmp_path / "adapters", base, 2, shape, device="cpu")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu"), adapters[1])
    ids = AutoTokenizer.from_pretrained(base)("who sits where", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 1024) and torch.isfinite(logits).all()
    assert build_random_gptq(tmp_path / "base", [], shape, device="cpu") == base  # a complete checkpoint is kept
