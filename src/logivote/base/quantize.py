"""GPTQ-Int4: quantize the tiny base model, and load any GPTQ checkpoint for LoRA training.

The recipe trains over Qwen2.5-32B-Instruct-GPTQ-Int4, whose base stays 4-bit.
:func:`build_quantized` gives the tiny model the same treatment with gptqmodel
(the maintained successor of auto-gptq, and what transformers 5 loads GPTQ
through): 4 bits, symmetric, ``desc_act: false``, calibrated on rendered
training prompts, saved in Qwen's GPTQ-Int4 layout (``quantization_config``
with ``quant_method: gptq`` in config.json; ``qweight``, ``qzeros``,
``scales``, ``g_idx`` per linear). How far its logits are from the float
model's is measured and written to ``logivote_quant.json`` in the model folder.

:func:`gptq_load_kwargs` is what training passes to ``from_pretrained`` for a
GPTQ checkpoint: a kernel that can train (gptqmodel picks an inference-only
one on some CPUs, e.g. ``TorchCpuAvx512Linear``, which refuses ``train()``).
One trap is documented in :func:`logivote.training.loop.train_adapter`: a no-grad
forward before training silently freezes gptqmodel's CPU kernel in its fused
inference mode, so training always starts in a fresh process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.jsonl import atomic_directory
from ..gpus import gpu_slots
from .pretrain import PretrainSettings
from .tiny_model import TinyShape, build_from_questions

log = logging.getLogger(__name__)

METHODS = ("none", "gptq-int4")
# gptqmodel 7.6 asks for 2 CPU workers at load and fails at once on a 2-core machine unless told
# how many it may use ("Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1").
CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"
# gptqmodel packs the int4 codes with a C++ extension it builds with ninja the first time it is used on a machine
# (pack_block_cpu: about 30 s of a 2-core machine's first run, cached under the user's HOME afterwards); its
# torch path packs the same bits and, for the small bases the workflow quantizes itself, in well under a second
PACK_EXT_ENV = "GPTQMODEL_DISABLE_PACK_EXT"


@dataclass(frozen=True)
class QuantizeSettings:
    """Config keys ``base_model.tiny.quantize``, ``.group_size``, ``.calibration_prompts`` and ``.gpus``
    (1: gptqmodel quantizes on the GPU the rule was granted; 0: on the CPU)."""

    quantize: str = "none"
    group_size: int = 128
    calibration_prompts: int = 64
    gpus: int = 0

    @classmethod
    def split(cls, tiny: dict[str, Any]) -> tuple[QuantizeSettings, TinyShape]:
        """The quantization keys and the shape keys of config ``base_model.tiny``."""
        names = set(cls.__dataclass_fields__)
        settings = cls(**{k: v for k, v in tiny.items() if k in names})
        if settings.quantize not in METHODS:
            raise ValueError(f"base_model.tiny.quantize: {settings.quantize!r} is not one of {METHODS}")
        return settings, TinyShape(**{k: v for k, v in tiny.items() if k not in names})


def check_group_size(shape: TinyShape, group_size: int) -> None:
    """Every quantized linear's input size must be a multiple of the group size (vLLM's CPU kernel: even)."""
    for name, size in (("hidden_size", shape.hidden_size), ("intermediate_size", shape.intermediate_size)):
        if size % group_size:
            raise ValueError(f"base_model.tiny.group_size {group_size} does not divide {name} {size}: "
                             f"choose the largest power of two that divides both (Qwen's checkpoints use 128)")
    if group_size % 2:
        raise ValueError(f"base_model.tiny.group_size {group_size} must be even (vLLM's CPU int4 kernel)")


def is_gptq(model_dir: str | os.PathLike[str]) -> bool:
    config = Path(model_dir) / "config.json"
    if not config.exists():
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return str(quant.get("quant_method", "")).lower() == "gptq"


def gptq_load_kwargs(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for training over a GPTQ checkpoint ({} for any other model)."""
    if not is_gptq(model_dir):
        return {}
    os.environ.setdefault(CPU_WORKERS_ENV, str(max(2, os.cpu_count() or 2)))
    from transformers import GPTQConfig

    quant = json.loads((Path(model_dir) / "config.json").read_text())["quantization_config"]
    # "auto_trainable": the fastest kernel with a backward pass on this device (CPU: TorchAtenLinear)
    return {"quantization_config": GPTQConfig(bits=quant.get("bits", 4), backend="auto_trainable")}


def calibration_texts(tokenizer: Any, questions: Sequence[dict[str, Any]], n: int) -> list[str]:
    """The first ``n`` training questions rendered exactly as training sees them (prompt + letter + end of turn)."""
    from ..data.prompt import answer_suffix, prompt_text

    answered = [q for q in questions if q.get("answer")]
    if not answered:
        raise ValueError("GPTQ calibration needs training questions (with answers); the configured sources have none")
    return [prompt_text(tokenizer, q) + q["answer"] + answer_suffix(tokenizer) for q in answered[:n]]


def quantize_gptq(float_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], texts: Sequence[str], group_size: int,
                  device: str = "cpu") -> None:
    """Quantize ``float_dir`` to GPTQ-Int4 (symmetric, no act-order) into ``out_dir`` with gptqmodel (its codes packed by
    torch, not by its JIT-built extension: :data:`PACK_EXT_ENV`)."""
    os.environ.setdefault(CPU_WORKERS_ENV, str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault(PACK_EXT_ENV, "1")
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(bits=4, group_size=group_size, sym=True, desc_act=False, offload_to_disk=False)
    model = GPTQModel.load(str(float_dir), config, device=device)
    model.quantize(list(texts), batch_size=1)
    model.save(str(out_dir))


def copy_missing(float_dir: str | os.PathLike[str], quant_dir: str | os.PathLike[str]) -> None:
    """Tokenizer, chat template, tiny shape: whatever of the float model's folder the quantizer did not write (weights aside)."""
    for extra in Path(float_dir).iterdir():
        target = Path(quant_dir) / extra.name
        if not target.exists() and extra.suffix != ".safetensors":
            shutil.copy2(extra, target) if extra.is_file() else shutil.copytree(extra, target)


def compare_logits(float_dir: str | os.PathLike[str], quant_dir: str | os.PathLike[str], texts: Sequence[str]) -> dict[str, float]:
    """Mean absolute logit difference and top-1 agreement (every position) of the quantized model against the float one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(float_dir)
    reference = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    quantized = AutoModelForCausalLM.from_pretrained(quant_dir, dtype=torch.float32, device_map="cpu").eval()
    diff = scale = 0.0
    agree = positions = 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            a, b = reference(input_ids=ids).logits[0], quantized(input_ids=ids).logits[0]
            diff += float((a - b).abs().mean()) * len(a)
            scale += float(a.abs().mean()) * len(a)
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += len(a)
    return {"prompts": len(texts), "positions": positions, "mean_abs_logit_diff": diff / positions,
            "mean_abs_logit_float": scale / positions, "top1_agreement": agree / positions}


def build_quantized(question_files: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], shape: TinyShape,
                    settings: QuantizeSettings, pretraining: PretrainSettings | None = None) -> dict[str, Any]:
    """The ``base_model`` rule with ``tiny.quantize: gptq-int4``: build the float tiny model, quantize it, measure it."""
    from transformers import AutoTokenizer

    from ..data.flatten import read_questions

    check_group_size(shape, settings.group_size)
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.float.", dir=target.parent) as scratch:
        float_dir = Path(scratch) / "float"
        build_from_questions(question_files, float_dir, shape, pretraining)
        tokenizer = AutoTokenizer.from_pretrained(float_dir)
        questions = [q for path in question_files for q in read_questions(path)]
        texts = calibration_texts(tokenizer, questions, settings.calibration_prompts)
        held_out = calibration_texts(tokenizer, questions, 2 * settings.calibration_prompts)[len(texts):] or texts
        log.info("GPTQ-Int4: group size %d, %d calibration prompts; logits compared on %d %s prompts",
                 settings.group_size, len(texts), len(held_out), "held-out" if held_out is not texts else "calibration")
        with atomic_directory(target) as tmp, gpu_slots(settings.gpus):
            quantize_gptq(float_dir, tmp, texts, settings.group_size, device="cuda:0" if settings.gpus else "cpu")
            copy_missing(float_dir, tmp)
            report = {"settings": asdict(settings), "logits_vs_float": compare_logits(float_dir, tmp, held_out)}
            (tmp / "logivote_quant.json").write_text(json.dumps(report, indent=1) + "\n")
    cmp = report["logits_vs_float"]
    log.info("quantized vs float logits on %d prompts (%d positions): mean |diff| %.4g (mean |logit| %.4g), top-1 agreement %.1f %%",
             cmp["prompts"], cmp["positions"], cmp["mean_abs_logit_diff"], cmp["mean_abs_logit_float"], 100 * cmp["top1_agreement"])
    return report


# Files of a GPTQ checkpoint that a dequantized copy must not carry (it is a plain float model).
_GPTQ_ONLY_FILES = ("quantize_config.json", "quant_log.csv")
_GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def _unpack_int4(packed: Any, dim: int) -> Any:
    """int32 words holding eight 4-bit codes (code ``j`` in bits ``4 j .. 4 j + 3``) unpacked along ``dim``."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    if dim == 0:  # qweight [in / 8, out] -> [in, out]
        codes = (packed.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF
        return codes.reshape(packed.shape[0] * 8, packed.shape[1])
    codes = (packed.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF  # qzeros [groups, out / 8] -> [groups, out]
    return codes.reshape(packed.shape[0], packed.shape[1] * 8)


def dequantize_linear(qweight: Any, qzeros: Any, scales: Any, g_idx: Any, v1_zeros: bool) -> Any:
    """One GPTQ-Int4 linear as a float32 ``weight [out, in]`` (nn.Linear's layout).

    ``W[i, o] = scales[g, o] * (q[i, o] - z[g, o])`` with ``g = g_idx[i]``. Checkpoints in GPTQ's v1
    format (``checkpoint_format: gptq``, what gptqmodel writes and Qwen publishes) store each zero point
    minus one; ``v1_zeros`` adds it back. Exact in float32: codes and zeros are 4-bit integers, the
    scales float16.
    """
    import torch

    codes = _unpack_int4(qweight, 0).to(torch.float32)
    zeros = _unpack_int4(qzeros, 1).to(torch.float32) + (1.0 if v1_zeros else 0.0)
    rows = g_idx.long()
    weight = scales.to(torch.float32)[rows] * (codes - zeros[rows])
    return weight.t().contiguous()


def dequantize_checkpoint(src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], dtype: str, fp8: bool = False) -> None:
    """A GPTQ-Int4 checkpoint rewritten as the same model with plain ``dtype`` weights, for a server that has no int4 kernel.

    Every quantized linear becomes a ``weight`` (its ``bias`` stays); every other tensor is cast to
    ``dtype``; config.json loses ``quantization_config``; tokenizer, chat template and the rest are
    copied. The module names do not change, so LoRA adapters trained over the int4 linears apply to the
    dequantized ones as they are. Sharded checkpoints keep their shards and index.

    ``fp8``: each linear's weight is written in FP8 e4m3 over one float32 ``weight_scale`` (``amax(|W|) / 448``) and
    config.json says ``quantization_config: {quant_method: fp8, activation_scheme: dynamic}``, the FP8 checkpoint
    vLLM serves on GPUs with FP8 tensor cores (activations quantized as they come); half the bytes of a bf16 copy
    (33 GB for the 32B base), dequantized on a GPU where there is one.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = Path(src_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    quant = config.pop("quantization_config", None) or {}
    if str(quant.get("quant_method", "")).lower() != "gptq" or int(quant.get("bits", 0)) != 4:
        raise ValueError(f"{src}: not a GPTQ-Int4 checkpoint (config.json quantization_config: {quant or 'none'})")
    v1_zeros = str(quant.get("checkpoint_format", quant.get("format", "gptq"))).lower() == "gptq"
    target = getattr(torch, dtype)
    device = "cuda" if fp8 and torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    renamed: dict[str, str] = {}
    added: dict[str, str] = {}  # new tensor -> shard (fp8's weight scales)
    for shard in sorted(src.glob("*.safetensors")):
        tensors: dict[str, Any] = {}
        with safe_open(str(shard), framework="pt") as handle:
            names = list(handle.keys())
            linears = sorted({name.rsplit(".", 1)[0] for name in names if name.endswith(".qweight")})
            for prefix in linears:
                parts = {part: handle.get_tensor(f"{prefix}.{part}").to(device) for part in _GPTQ_TENSORS}
                weight = dequantize_linear(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], v1_zeros)
                if fp8:
                    tensors[f"{prefix}.weight"], tensors[f"{prefix}.weight_scale"] = fp8_per_tensor(weight)
                    added[f"{prefix}.weight_scale"] = shard.name
                else:
                    tensors[f"{prefix}.weight"] = weight.to(target).cpu()
                for part in _GPTQ_TENSORS:
                    renamed[f"{prefix}.{part}"] = f"{prefix}.weight"
            for name in names:
                if name.rsplit(".", 1)[-1] not in _GPTQ_TENSORS:
                    tensor = handle.get_tensor(name)
                    tensors[name] = tensor.to(target) if tensor.is_floating_point() else tensor
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
    for extra in src.iterdir():
        if extra.suffix == ".safetensors" or extra.name in _GPTQ_ONLY_FILES or extra.name == "config.json":
            continue
        if extra.name.endswith(".safetensors.index.json"):
            index = json.loads(extra.read_text())
            index["weight_map"] = {renamed.get(name, name): file for name, file in index["weight_map"].items()} | added
            (out / extra.name).write_text(json.dumps(index, indent=2) + "\n")
        elif extra.is_file():
            shutil.copy2(extra, out / extra.name)
    config["torch_dtype"] = config["dtype"] = dtype
    if fp8:
        config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def fp8_per_tensor(weight: Any) -> tuple[Any, Any]:
    """``weight`` as e4m3 (on the CPU) and its one float32 scale (a scalar): ``weight ≈ e4m3 · scale``, ``scale = amax / 448``."""
    import torch

    scale = weight.float().abs().amax().clamp_min(1e-30) / 448.0
    return (weight.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).cpu(), scale.reshape(()).cpu()
