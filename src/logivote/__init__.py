"""logivote: bagged LoRA voting for multiple-choice logic puzzles.

All logic of the Snakemake workflow lives in this package, one subpackage per stage of the recipe;
each stage imports only the stages before it (``tests/workflow/test_layout.py`` keeps it so):

1. :mod:`logivote.data` — flatten the puzzles, bag the questions, the shared prompt;
2. :mod:`logivote.base` — the base model: tiny or downloaded, GPTQ-Int4, dequantized for serving;
3. :mod:`logivote.training` — K LoRA adapters per job in one training step;
4. :mod:`logivote.ensemble` — votes, submission, evaluation, plots;
5. :mod:`logivote.serving` — vLLM servers, the client, predict and revote.

:mod:`logivote.gpus` and :mod:`logivote.logs` serve every stage; :mod:`logivote.bench` holds the
benchmarks. The rules in ``workflow/rules`` only name files and call one function each.
"""

__version__ = "0.1.0"
