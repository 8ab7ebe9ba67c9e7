"""Benchmarks (not tests): each module is run with ``python -m logivote.bench.<name>`` and feeds one
README table. They print ratios and raw figures; nothing here is imported by the workflow.

- :mod:`logivote.bench.inference` — resources/benchmarks/README.md "Inference: the recipe's way against ours" and "Prefix reuse".
- :mod:`logivote.bench.train_gpu` — resources/benchmarks/README.md "Training on a GPU".
- :mod:`logivote.bench.two_gpus` — resources/benchmarks/README.md "Two GPUs".
- :mod:`logivote.bench.full_depth` — the recipe's predict phase at full 32B depth (random GPTQ-Int4 checkpoint builder).
"""
