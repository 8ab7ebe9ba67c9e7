"""Benchmark (not a test): the frozen int4 base's GEMMs in FP8 (``train.frozen_gemm: fp8``) against bf16 (issue 41).

On a Qwen2.5-32B-shaped GPTQ-Int4 base with random int4 weights (:func:`logivote.bench.full_depth.build_random_gptq`,
all 64 layers by default), loaded and wrapped as the workflow's training does (K stacked adapters, packed
stream, fused elementwise steps, checkpointed layers), it prints JSON lines:

- ``"case": "gemm"``: per linear of layer 0, forward + input gradient at the step's token count, bf16 (the
  one-pass dequantization and the GEMMs) against FP8 (the activation's and gradient's quantization, the e4m3
  weight in each layout, the two FP8 GEMMs), with the quantization's own share;
- ``"case": "linear_error"``: one K-adapter step in FP8 with every frozen linear's output and input gradient
  compared with the bf16 GEMM on the same operands (relative Frobenius error, mean and max over the layers), per
  linear kind;
- ``"case": "lora_grad"``: the same step's LoRA gradients against the bf16 step's (same batch, same dropout
  masks): cosine similarity per adapter and module kind (each adapter's A and B gradients of that kind over
  all layers as one vector), and the largest relative difference of the adapters' losses. LoRA's B starts at
  zero in training, which leaves A's gradient zero; here B is drawn N(0, 0.01²) first, as after some steps.

    python -m logivote.bench.fp8 --out fp8.jsonl [--layers 64] [--k 21] [--work /tmp/fp8]

The speed of whole steps comes from ``python -m logivote.bench.multi_adapter ... --frozen-gemm fp8`` (and bf16).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from logivote.data.jsonl import dumps


def _timed(fn: Any, n: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / n


def gemm_times(module: Any, tokens: int) -> dict[str, float]:
    """Forward + input gradient of one frozen linear at ``tokens`` rows: bf16 against FP8, in ms."""
    from logivote.training import fp8_frozen, gptq_dequant

    x = torch.randn(tokens, int(module.in_features), dtype=torch.bfloat16, device="cuda")
    g = torch.randn(tokens, int(module.out_features), dtype=torch.bfloat16, device="cuda")

    def bf16() -> None:
        w = gptq_dequant.dequantize(module, torch.bfloat16)
        x @ w
        g @ w.t()

    def fp8() -> None:
        x8, sx = fp8_frozen.quantize_e4m3(x)
        fp8_frozen.scaled_mm(x8, sx, fp8_frozen.weight_e4m3(module, True).t(), fp8_frozen.weight_scale(module)[0], tokens, torch.bfloat16)
        g8, sg = fp8_frozen.quantize_e4m3(g)
        fp8_frozen.scaled_mm(g8, sg, fp8_frozen.weight_e4m3(module, False).t(), fp8_frozen.weight_scale(module)[0], tokens, torch.bfloat16)

    def quantize_only() -> None:
        fp8_frozen.quantize_e4m3(x)
        fp8_frozen.quantize_e4m3(g)
        fp8_frozen.weight_e4m3(module, True)
        fp8_frozen.weight_e4m3(module, False)

    def bf16_gemms_only() -> None:
        x @ w_kept
        g @ w_kept.t()

    w_kept = gptq_dequant.dequantize(module, torch.bfloat16)
    a, b, q, m = _timed(bf16), _timed(fp8), _timed(quantize_only), _timed(bf16_gemms_only)
    flops = 2 * 2 * tokens * int(module.in_features) * int(module.out_features)
    return {"bf16_ms": a, "fp8_ms": b, "speedup": a / b, "fp8_quantize_ms": q, "bf16_gemm_only_ms": m,
            "fp8_gemm_only_ms": b - q, "fp8_gemm_tflops": flops / max(b - q, 1e-9) / 1e9, "bf16_gemm_tflops": flops / m / 1e9}


class LinearErrors:
    """Wraps :class:`logivote.training.fp8_frozen._Fp8Int4MatMul` so that every FP8 forward and input gradient is
    compared with the bf16 GEMM on the same operands (module name -> list of relative errors)."""

    def __init__(self, names: dict[Any, str]) -> None:
        from logivote.training import fp8_frozen, gptq_dequant

        self.names, self.forward, self.input_grad = names, {}, {}
        cls = fp8_frozen._Fp8Int4MatMul
        self._orig = (cls.forward, cls.backward)
        orig_forward, orig_backward = self._orig

        def rel(got: torch.Tensor, want: torch.Tensor) -> float:
            return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))

        def forward(ctx: Any, x: Any, x8: Any, xs: Any, module: Any, keep: bool, addend: Any) -> Any:
            out = orig_forward(ctx, x, x8, xs, module, keep, addend)
            want = x @ gptq_dequant.dequantize(module, x.dtype)
            got = out - (addend if addend is not None else 0) - (module.bias.to(x.dtype) if module.bias is not None else 0)
            self.forward.setdefault(self.names[module], []).append(rel(got, want))
            return out

        def backward(ctx: Any, grad: Any) -> Any:
            result = orig_backward(ctx, grad)
            want = grad @ gptq_dequant.dequantize(ctx.module, grad.dtype).t()
            self.input_grad.setdefault(self.names[ctx.module], []).append(rel(result[0], want))
            return result

        cls.forward, cls.backward = staticmethod(forward), staticmethod(backward)

    def close(self) -> None:
        from logivote.training import fp8_frozen

        fp8_frozen._Fp8Int4MatMul.forward, fp8_frozen._Fp8Int4MatMul.backward = (staticmethod(f) for f in self._orig)

    def by_kind(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for what, table in (("forward", self.forward), ("input_grad", self.input_grad)):
            kinds: dict[str, list[float]] = {}
            for name, values in table.items():
                kinds.setdefault(name.rsplit(".", 1)[-1], []).extend(values)
            for kind, values in kinds.items():
                out.setdefault(kind, {})[f"{what}_mean"] = sum(values) / len(values)
                out[kind][f"{what}_max"] = max(values)
                out[kind][f"{what}_n"] = len(values)
        return out


def main(argv: list[str] | None = None) -> None:
    from logivote.training import fp8_frozen
    from logivote.training.fused import fuse_elementwise
    from logivote.training.loop import encode_subset, load_base, use_expandable_segments
    from logivote.training.packing import pack, row_losses, use_packed_attention
    from logivote.training.settings import RECIPE_TARGETS
    from logivote.training.stacked_lora import LoraShape, StackedLora

    from .full_depth import QWEN32B, build_random_gptq
    from .multi_adapter import LENGTHS, synthetic_subset
    from .train_gpu import padded_questions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--k", type=int, default=21)
    ap.add_argument("--work", default="/tmp/fp8_bench")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    use_expandable_segments()
    device_name = torch.cuda.get_device_name(0)

    def emit(row: dict[str, Any]) -> None:
        line = dumps({"device": device_name, "layers": args.layers, "K": args.k, "tag": args.tag, **row})
        print(line, flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = [q["problem"] + q["question"] for q in padded_questions(64, 400, 1.0)]
    base = work / ("base-qwen32b-random-gptq" if args.layers == 64 else f"base-qwen32b-{args.layers}l")  # the first: bench.multi_adapter's
    if not (base / "config.json").exists():
        build_random_gptq(base, texts, replace(QWEN32B, num_hidden_layers=args.layers), device="cuda")
    torch.cuda.empty_cache()
    tokenizer, model = load_base(base, torch.bfloat16, on_gpu=True)
    model.requires_grad_(False)
    model.config.use_cache = False
    use_packed_attention(model)
    fuse_elementwise(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = StackedLora(model, args.k, LoraShape(8, 16, 0.05, tuple(RECIPE_TARGETS)), seeds=[42] * args.k, dtype=torch.bfloat16,
                       keep_dequantized=True)
    model.train()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for layer in lora.layers.values():
        layer.lora_B.data.normal_(0.0, 0.01, generator=gen)
    lengths = json.loads(LENGTHS.read_text())["lengths"]
    examples = []
    for k in range(args.k):
        path = work / f"subset-{k}.jsonl"
        synthetic_subset(path, 4, k, tokenizer, lengths)
        examples.append(encode_subset(tokenizer, path, 1800)[0])
    batch = pack(examples, tokenizer.pad_token_id or 0, torch.device("cuda"), 128, adapters=list(range(args.k)), k=args.k)
    tokens = int(batch.input_ids.shape[-1])

    n_fp8, wrapped = lora.use_fp8()
    layer0 = {name.rsplit(".", 1)[-1]: layer.base for name, layer in lora.layers.items() if ".layers.0." in name}
    for kind, module in layer0.items():
        emit({"case": "gemm", "linear": kind, "tokens": tokens, "in": int(module.in_features), "out": int(module.out_features),
              **gemm_times(module, tokens)})

    body, head = model.base_model, model.get_output_embeddings()

    def step(fp8: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for layer in lora.layers.values():
            layer.fp8 = fp8 and fp8_frozen.supports(layer.base)
            layer.lora_A.grad = layer.lora_B.grad = None
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        with lora.tokens(batch.token_adapter, batch.adapter_ends):
            hidden = body(input_ids=batch.input_ids, position_ids=batch.position_ids, **batch.attention_kwargs()).last_hidden_state
            row_loss = row_losses(head(hidden[0, batch.label_at]), batch)
            row_loss.sum().backward()
        grads = {}
        for name, layer in lora.layers.items():
            grads[name + ".A"] = layer.lora_A.grad.detach().clone()
            grads[name + ".B"] = layer.lora_B.grad.detach().clone()
        return row_loss.detach().float(), grads

    loss_bf16, grads_bf16 = step(False)
    errors = LinearErrors({layer.base: name for name, layer in lora.layers.items()})
    try:
        loss_fp8, grads_fp8 = step(True)
    finally:
        errors.close()
    for kind, row in sorted(errors.by_kind().items()):
        emit({"case": "linear_error", "linear": kind, "tokens": tokens, **row})
    cosines: dict[str, list[float]] = {}
    for kind in RECIPE_TARGETS:
        names = [n for n in grads_bf16 if n.rsplit(".", 2)[-2] == kind]
        for k in range(args.k):
            a = torch.cat([grads_bf16[n][k].float().flatten() for n in names])
            b = torch.cat([grads_fp8[n][k].float().flatten() for n in names])
            cosines.setdefault(kind, []).append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    loss_diff = ((loss_fp8 - loss_bf16).abs() / loss_bf16.abs()).max().item()
    emit({"case": "lora_grad", "tokens": tokens, "fp8_linears": n_fp8, "linears": wrapped, "loss_max_rel_diff": loss_diff,
          "cosine_min": min(min(v) for v in cosines.values()),
          "cosine_by_module": {kind: {"min": min(v), "mean": sum(v) / len(v)} for kind, v in cosines.items()},
          "cosine_by_adapter_min": [min(cosines[kind][k] for kind in cosines) for k in range(args.k)]})


if __name__ == "__main__":
    main()
