"""Stage 3, training: K LoRA adapters per job over one frozen (int4) base, in one step.

- :mod:`.job` — the rules' entry points: ``train_lora`` (:func:`~.job.train_lora_job`) and ``link_adapter``
  (:func:`~.job.link_adapter`);
- :mod:`.settings` — :class:`~.settings.TrainSettings` (config ``train``), the dtype, the seeds, the schedule;
- :mod:`.loop` — :func:`~.loop.train_adapters`, the loop; :mod:`.checkpoints` — checkpoints and resume.
- The step's parts: :mod:`.packing` (the adapters' examples in one packed stream), :mod:`.stacked_lora`
  (K adapters' LoRA weights stacked per linear), :mod:`.stacked_adamw` (one flat optimizer for them),
  :mod:`.frozen_gptq` and :mod:`.gptq_dequant` (the frozen int4 linear), :mod:`.recompute` (selective
  checkpointing), :mod:`.fused` (fused GPU kernels), :mod:`.cuda_graphs` (replayed steps).

Imports only :mod:`logivote.data` and :mod:`logivote.base`.
"""
