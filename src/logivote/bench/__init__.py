"""Benchmarks (not tests): each module is run with ``python -m logivote.bench.<name>`` and feeds one
README table. They print ratios and raw figures; nothing here is imported by the workflow.

They stay inside the installed package, unlike vLLM's: most of them drive the workflow's own functions at scale
(``train_adapters``, ``predict``) on the lent GPU machine, where the checkout's ``src/`` on ``PYTHONPATH`` is what
travels, and the documented ``python -m logivote.bench.<name>`` commands then work the same from any checkout.

CPU, the embedded default:
- :mod:`.seeds` — the learning relations for several train seeds on both serving paths (README "What the default shows").
- :mod:`.cold_run` — a newcomer's first run with every per-user cache empty, then warm (README's time table).
- :mod:`.path_agreement` — how often two serving paths give the same letter.
- :mod:`.lead` — where the vote's lead over the mean adapter comes from, by puzzle kind.
- :mod:`.pretrain_kinds` — which puzzle kinds the pre-trained tiny base reads.
- :mod:`.inference` — resources/benchmarks/README.md "Inference: the recipe's way against ours" and "Prefix reuse".

GPU (resources/benchmarks/README.md, docs/gpus.md):
- :mod:`.train_gpu` — "Training on a GPU"; :mod:`.multi_adapter` — K adapters per step, up to full 32B depth
  (``--frozen-gemm fp8 bf16`` for FP8); :mod:`.two_gpus` — "Two GPUs".
- :mod:`.full_depth` — the recipe's predict phase at full 32B depth (random GPTQ-Int4 checkpoint builder; ``--weights fp8``).
- :mod:`.dequant` — the one-pass int4 dequantization; :mod:`.fused` — the fused RMSNorm, SwiGLU and rotary embedding.
- :mod:`.fp8` — FP8 frozen GEMMs: per-GEMM time, per-linear error, LoRA-gradient cosine of one full-depth step;
  :mod:`.fp8_train` — one config trained with bf16 and FP8 frozen GEMMs; :mod:`.fp8_serving` — ``serve.weights``
  int4 against fp8 on a trained model (or two adapter sets).
"""

from typing import Any

from logivote.data.jsonl import dumps


def report(result: dict[str, Any], out: str) -> None:
    """Print ``result`` as the benchmark's ``RESULT {json}`` line and append the JSON line to ``out``."""
    line = dumps(result)
    print("RESULT", line, flush=True)
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
