"""logivote: bagged LoRA voting for multiple-choice logic puzzles.

All logic of the Snakemake workflow lives in this package; the rules in
``workflow/rules`` only name files and call one function each.
"""

__version__ = "0.1.0"
