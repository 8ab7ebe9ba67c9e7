"""Logging for rule scripts: everything a step prints goes to the rule's ``log:`` file.

:func:`log_to` points file descriptors 1 and 2 at the log (so progress bars,
library warnings and C-level output land there too) and sends the package's
log records along. If the step fails, the one-line error (``file:line: what
is wrong`` for bad input) is also written to the original stderr, so
Snakemake's console names the problem, not only the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str]) -> Iterator[logging.Logger]:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd in (1, 2):
        os.dup2(log_fd, fd)
    os.close(log_fd)
    root = logging.getLogger("logivote")
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    propagate, root.propagate = root.propagate, False  # a library's logging.basicConfig() would print every record twice
    try:
        yield root
    except BaseException as err:
        root.error("%s: %s", type(err).__name__, err, exc_info=not isinstance(err, ValueError))
        os.write(saved[2], f"{type(err).__name__}: {err}\n(full log: {os.fspath(path)})\n".encode("utf-8", "replace"))
        raise
    finally:
        root.removeHandler(handler)
        root.propagate = propagate
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
