"""Stage 2, base: the model the adapters are trained over and served on.

- :mod:`.models` — rule ``base_model`` (:func:`~.models.prepare_base_model`): build the tiny model, or download.
- :mod:`.tiny_model`, :mod:`.pretrain` — the embedded default's tiny Qwen2 model, pre-trained briefly.
- :mod:`.quantize` — GPTQ-Int4 quantization (gptqmodel), loading for training, and
  :func:`~.quantize.dequantize_checkpoint`, which serving uses where the CPU has no int4 kernel.

Imports only :mod:`logivote.data`.
"""
