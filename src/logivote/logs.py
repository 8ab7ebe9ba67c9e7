"""Logging for rule scripts: everything to the rule's ``log:`` file, errors also to stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None) -> Iterator[logging.Logger]:
    """Send the package's log records to ``path``; on an exception, log it and re-raise.

    The error's one-line message (``file:line: what is wrong`` for bad input) is
    also written to stderr, so Snakemake's own output names the problem.
    """
    root = logging.getLogger("logivote")
    root.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.ERROR)
    handlers: list[logging.Handler] = [stderr]
    if path:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    try:
        yield root
    except Exception as err:
        root.error("%s: %s", type(err).__name__, err, exc_info=not isinstance(err, ValueError))
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
