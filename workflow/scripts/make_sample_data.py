"""Regenerate resources/data/ (the embedded sample) with logivote.sample_data.

Usage: python workflow/scripts/make_sample_data.py [OUT_DIR]
"""

import sys

from logivote.sample_data import write_sample

write_sample(sys.argv[1] if len(sys.argv) > 1 else "resources/data")
