"""Stage 3, training: K LoRA adapters per job over one frozen (int4) base, in one step.

- :mod:`.train` — rules ``train_lora`` (:func:`~.train.train_lora_job`) and ``adapter``
  (:func:`~.train.link_adapter`); :func:`~.train.train_adapters` is the loop, with checkpoints and resume.
- The step's parts: :mod:`.packing` (the adapters' examples in one packed stream), :mod:`.stacked_lora`
  (K adapters' LoRA weights stacked per linear), :mod:`.stacked_adamw` (one flat optimizer for them),
  :mod:`.frozen_gptq` and :mod:`.gptq_dequant` (the frozen int4 linear), :mod:`.recompute` (selective
  checkpointing), :mod:`.fused` (fused GPU kernels), :mod:`.cuda_graphs` (replayed steps).

Imports only :mod:`logivote.data` and :mod:`logivote.base`.
"""
