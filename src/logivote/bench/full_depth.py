"""Benchmark (not a test): the recipe's predict phase at its true scale, with random weights.

:func:`build_random_gptq` writes a Qwen2.5-32B-shaped GPTQ-Int4 checkpoint (all 64 layers by
default) with random int4 weights in Qwen's GPTQ layout (``qweight``, ``qzeros``, ``scales``,
``g_idx`` per linear, biases on q/k/v, fp16 embeddings, head and norms), Qwen's config with its
``quantization_config``, and the project's own tokenizer (:func:`logivote.base.tiny_model.train_tokenizer`
on the questions); about 18 GB, made on the GPU in seconds, no calibration, no download.
:func:`write_random_adapters` writes rank-r LoRA adapters in peft's layout. The compute of serving
does not depend on the weights' values, so the timings are those of the real model.

``main`` serves that checkpoint with N adapters through the workflow's own
:func:`logivote.serving.inference.predict` on the real test file (64 client threads, structured-output
choice) and prints one JSON line: server start, answers/s, the phase's wall time, prefix-cache hit
rate, peak GPU memory (nvidia-smi, sampled every second).

    python -m logivote.bench.full_depth --data DIR --work /tmp/fd --out result.jsonl [--questions N] [--max-loras 21] [--prepare-only]
        [--shards S]  (the phase split by adapter as serve.shards does, the S shards one after the other on one card)
        [--weights fp8]  (serve.weights: the base written once as an FP8 checkpoint and served with vLLM's FP8 GEMMs)
    (``DIR`` holds round1_train_data.jsonl and round1_test_data.jsonl; vLLM importable.)

The training-speed issue's full-depth benchmark is meant to reuse :func:`build_random_gptq` for its base.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from logivote.base.tiny_model import TinyShape
from logivote.data.jsonl import atomic_directory, atomic_write_jsonl, dumps

# Qwen2.5-32B-Instruct's shape (the recipe's base), all 64 layers; dataclasses.replace(..., num_hidden_layers=n) cuts a slice
QWEN32B = TinyShape(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                    num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, dtype="float16")
GROUP_SIZE = 128  # Qwen's GPTQ-Int4 checkpoints


def linears(shape: TinyShape) -> dict[str, tuple[str, int, int]]:
    """LoRA target name -> (submodule, in_features, out_features) of one decoder layer."""
    head_dim = shape.hidden_size // shape.num_attention_heads
    q, kv, h, i = shape.num_attention_heads * head_dim, shape.num_key_value_heads * head_dim, shape.hidden_size, shape.intermediate_size
    return {"q_proj": ("self_attn", h, q), "k_proj": ("self_attn", h, kv), "v_proj": ("self_attn", h, kv), "o_proj": ("self_attn", q, h),
            "gate_proj": ("mlp", h, i), "up_proj": ("mlp", h, i), "down_proj": ("mlp", i, h)}


def _random_int4_linear(prefix: str, n_in: int, n_out: int, group: int, bias: bool, gen: Any, device: str) -> dict[str, Any]:
    """One GPTQ-Int4 linear (symmetric, no act-order) in Qwen's layout: 8 int4 values per int32 of ``qweight``
    along the input dimension, zero point 8 in every nibble of ``qzeros``, small positive fp16 scales."""
    import torch

    tensors = {
        f"{prefix}.qweight": torch.randint(-2**31, 2**31 - 1, (n_in // 8, n_out), dtype=torch.int32, device=device, generator=gen),
        f"{prefix}.qzeros": torch.full((n_in // group, n_out // 8), 0x77777777, dtype=torch.int32, device=device),
        f"{prefix}.scales": (torch.rand((n_in // group, n_out), device=device, generator=gen) * 2e-3 + 1e-3).half(),
        f"{prefix}.g_idx": torch.arange(n_in, dtype=torch.int32, device=device) // group,
    }
    if bias:
        tensors[f"{prefix}.bias"] = torch.zeros(n_out, dtype=torch.float16, device=device)
    return {k: v.cpu() for k, v in tensors.items()}


def build_random_gptq(out_dir: str | Path, tokenizer_texts: list[str], shape: TinyShape = QWEN32B, vocab_for_tokenizer: int = 4096,
                      device: str = "cuda", seed: int = 0, layers_per_shard: int = 8, group_size: int = GROUP_SIZE) -> Path:
    """Write the checkpoint (atomically; an existing complete one is kept). Returns its folder."""
    import torch
    from safetensors.torch import save_file

    from logivote.base.tiny_model import train_tokenizer

    target = Path(out_dir)
    if (target / "config.json").exists():
        return target
    with atomic_directory(target) as tmp:
        tokenizer = train_tokenizer(tokenizer_texts, vocab_for_tokenizer)
        tokenizer.save_pretrained(tmp)
        eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config = {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size, "num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
            "num_key_value_heads": shape.num_key_value_heads, "vocab_size": shape.vocab_size, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
            "torch_dtype": "float16", "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": shape.num_hidden_layers,
            "attention_dropout": 0.0, "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad,
            "quantization_config": {"bits": 4, "group_size": group_size, "desc_act": False, "sym": True,
                                    "quant_method": "gptq", "static_groups": False, "true_sequential": True, "damp_percent": 0.01},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": pad}))
        gen = torch.Generator(device=device).manual_seed(seed)
        weight_map: dict[str, str] = {}

        def flush(shard: dict[str, Any], name: str) -> None:
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard.clear()

        def dense(*size: int) -> Any:
            return (torch.randn(*size, device=device, generator=gen) * 0.02).half().cpu()

        shard: dict[str, Any] = {"model.embed_tokens.weight": dense(shape.vocab_size, shape.hidden_size),
                                 "lm_head.weight": dense(shape.vocab_size, shape.hidden_size),
                                 "model.norm.weight": torch.ones(shape.hidden_size, dtype=torch.float16)}
        flush(shard, "model-embed-head.safetensors")
        for layer in range(shape.num_hidden_layers):
            prefix = f"model.layers.{layer}"
            for name, (part, n_in, n_out) in linears(shape).items():
                shard.update(_random_int4_linear(f"{prefix}.{part}.{name}", n_in, n_out, group_size,
                                                 name in ("q_proj", "k_proj", "v_proj"), gen, device))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                shard[f"{prefix}.{norm}.weight"] = torch.ones(shape.hidden_size, dtype=torch.float16)
            if (layer + 1) % layers_per_shard == 0 or layer + 1 == shape.num_hidden_layers:
                flush(shard, f"model-layers-{layer // layers_per_shard:02d}.safetensors")
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def write_random_adapters(out_root: str | Path, base_dir: str | Path, n: int, shape: TinyShape = QWEN32B, r: int = 8,
                          device: str = "cuda", seed: int = 1000) -> dict[int, str]:
    """``n`` rank-``r`` LoRA adapters on every linear of every layer, in peft's file layout."""
    import torch
    from safetensors.torch import save_file

    folders = {}
    for k in range(n):
        folder = Path(out_root) / str(k)
        folders[k] = str(folder)
        if (folder / "adapter_config.json").exists():
            continue
        gen = torch.Generator(device=device).manual_seed(seed + k)
        tensors = {}
        for layer in range(shape.num_hidden_layers):
            for name, (part, n_in, n_out) in linears(shape).items():
                key = f"base_model.model.model.layers.{layer}.{part}.{name}"
                tensors[f"{key}.lora_A.weight"] = (torch.randn(r, n_in, device=device, generator=gen) * 0.01).half().cpu()
                tensors[f"{key}.lora_B.weight"] = (torch.randn(n_out, r, device=device, generator=gen) * 0.01).half().cpu()
        with atomic_directory(folder) as tmp:
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            (tmp / "adapter_config.json").write_text(json.dumps({
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0,
                "target_modules": sorted(linears(shape)), "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                "use_rslora": False, "use_dora": False, "base_model_name_or_path": str(base_dir)}))
    return folders


class GpuMemory:
    """Peak GPU memory in use (MiB, every GPU summed) while the block runs, sampled by nvidia-smi every second."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib, sum(int(x) for x in out.split()))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def read_phase_log(path: str | Path) -> dict[str, Any]:
    """From the workflow's predict log: server start, asking time and answers/s (logivote's own lines)."""
    text = Path(path).read_text()
    out: dict[str, Any] = {}
    if m := re.search(r"vLLM server healthy after (\d+) s", text):
        out["server_start_s"] = int(m.group(1))
    if m := re.search(r"asked (\d+) in ([\d.]+) s \(([\d.]+) answers/s\)", text):
        out.update(asked=int(m.group(1)), asking_s=float(m.group(2)), answers_per_s=float(m.group(3)))
    return out


def prefix_hit_rate(server_log: str | Path) -> float | None:
    """The last prefix-cache hit rate vLLM logged (its periodic stats line), in %."""
    rates = re.findall(r"[Pp]refix cache hit rate: ([\d.]+)%", Path(server_log).read_text(errors="replace"))
    return float(rates[-1]) if rates else None


def main(argv: list[str] | None = None) -> None:
    import torch

    from logivote.data.flatten import Source, flatten, read_questions
    from logivote.data.prompt import SYSTEM, user_prompt
    from logivote.logs import log_to
    from logivote.serving.client import shard_cache
    from logivote.serving.inference import predict, shard_adapters

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with round1_train_data.jsonl and round1_test_data.jsonl")
    ap.add_argument("--work", default="/tmp/full_depth")
    ap.add_argument("--out", required=True, help="JSONL file to append the result line to")
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=21)
    ap.add_argument("--questions", type=int, default=0, help="the first N test questions (0: all)")
    ap.add_argument("--max-loras", type=int, default=21)
    ap.add_argument("--gpu-memory-utilization", default="0.88")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra vLLM argument (repeat)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the server gets (pass --tensor-parallel-size through --serve-arg)")
    ap.add_argument("--device", default="cuda", help="where the random weights are drawn")
    ap.add_argument("--weights", default="auto", choices=("auto", "int4", "fp8"),
                    help="serve.weights: the int4 checkpoint as it is, or fp8 (written once as an FP8 checkpoint, its time in the server start)")
    ap.add_argument("--prepare-only", action="store_true", help="build the checkpoint and adapters, serve nothing (needs no vLLM)")
    ap.add_argument("--shards", type=int, default=1,
                    help="split the phase by adapter as serve.shards does, and run the shards one after the other on this card")
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    flatten([Source("train", str(data / "round1_train_data.jsonl"), "train"), Source("test", str(data / "round1_test_data.jsonl"), "test")],
            work / "train.jsonl", work / "test.jsonl")
    questions = read_questions(work / "test.jsonl")
    if args.questions:
        questions = questions[: args.questions]
    atomic_write_jsonl(work / "asked.jsonl", questions)
    shape = replace(QWEN32B, num_hidden_layers=args.layers)
    t0 = time.monotonic()
    texts = [SYSTEM] + [user_prompt(q) for q in read_questions(work / "train.jsonl") + read_questions(work / "test.jsonl")]
    base = build_random_gptq(work / f"qwen32b-{shape.num_hidden_layers}l-gptq-int4", texts, shape, device=args.device)
    build_s = time.monotonic() - t0
    adapters = write_random_adapters(work / "adapters", base, args.adapters, shape, device=args.device)
    adapters_s = time.monotonic() - t0 - build_s
    if args.prepare_only:
        print(f"prepared {base} and {len(adapters)} adapters in {build_s:.0f} + {adapters_s:.0f} s", flush=True)
        return
    torch.cuda.empty_cache()  # the server's --gpu-memory-utilization does not see this process's cached memory

    tag = args.tag or f"maxloras{args.max_loras}"
    run = work / f"run-{tag}-{int(time.time())}"
    run.mkdir()
    serve = {"dtype": "float16", "max_model_len": 4096, "max_loras": args.max_loras, "max_lora_rank": 8, "prefix_caching": True,
             "block_size": 16, "extra_args": ["--gpu-memory-utilization", args.gpu_memory_utilization, *args.serve_arg],
             "env": {"VLLM_USE_FLASHINFER_SAMPLER": "0", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                     # NVLink multicast stays off (it can take a shared host's GPUs out of service)
                     "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"},
             "health_timeout_s": 900, "gpus": args.gpus, "threads": 8, "weights": args.weights}
    client = {"threads": 64, "timeout_s": 600, "retries": 3, "backoff_s": 1.0}
    outs = {k: str(run / f"pred_{k}.jsonl") for k in adapters}
    started = time.monotonic()
    error = None
    shard_results = []
    with GpuMemory() as memory:
        for shard in range(args.shards):
            mine = {k: adapters[k] for k in shard_adapters(shard, len(adapters), args.shards)}
            suffix = f"-{shard}" if args.shards > 1 else ""
            shard_started = time.monotonic()
            with log_to(run / f"predict{suffix}.log"):
                try:
                    predict(str(base), mine, str(work / "asked.jsonl"), {k: outs[k] for k in mine},
                            shard_cache(str(run / "cache.jsonl"), shard, args.shards), serve, client, str(run / f"server{suffix}.log"))
                except Exception as exc:  # report the failure in the result line, then re-raise
                    error = f"{type(exc).__name__}: {str(exc)[-600:]}"
            shard_results.append({"shard": shard, "adapters": len(mine), "wall_s": round(time.monotonic() - shard_started, 1),
                                  **read_phase_log(run / f"predict{suffix}.log")})
            if error:
                break
    wall = time.monotonic() - started
    result: dict[str, Any] = {"bench": "full_depth_predict", "tag": tag, "layers": shape.num_hidden_layers, "adapters": len(adapters),
                              "questions": len(questions), "asks": len(questions) * len(adapters), "max_loras": args.max_loras, "gpus": args.gpus,
                              "serve_args": serve["extra_args"], "weights": args.weights, "build_s": round(build_s, 1), "adapters_s": round(adapters_s, 1),
                              "phase_wall_s": round(wall, 1), "gpu_peak_mib": memory.peak_mib,
                              "gpu": torch.cuda.get_device_name(0), "error": error}
    if args.shards == 1:
        result.update(read_phase_log(run / "predict.log"))
        result["prefix_cache_hit_rate_pct"] = prefix_hit_rate(run / "server.log")
    else:  # one after the other on this card: what each would take side by side on cards of its own
        result["shards"] = shard_results
        for shard in shard_results:
            shard["prefix_cache_hit_rate_pct"] = prefix_hit_rate(run / f"server-{shard['shard']}.log")
    if error is None:
        rows = [json.loads(line) for k in adapters for line in open(outs[k])]
        result.update(answered=len(rows), invalid=sum(r["answer"] == "invalid" for r in rows))
    with open(args.out, "a") as out:
        out.write(dumps(result) + "\n")
    print("RESULT", dumps(result), flush=True)
    if error is not None:
        raise SystemExit(error)


if __name__ == "__main__":
    main()
