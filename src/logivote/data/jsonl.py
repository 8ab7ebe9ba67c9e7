"""Reading and writing JSON Lines with errors that name ``file:line``.

Every reader in the package goes through :func:`iter_jsonl`, so a bad byte, a
broken line or a line that is not a JSON object is reported the same way
everywhere. Every writer goes through :func:`atomic_write_jsonl` /
:func:`atomic_write_text`: the file appears under its final name only when it
is complete, so an interrupted step never leaves a file that looks done; a write
that fails for want of space says so (:class:`DiskFull`: the disk is full, and where).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """A problem with an input file, located at ``path:line``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Line numbers start at 1. Blank lines (also a trailing newline) are skipped, and so is a UTF-8
    byte-order mark at the start of the file.
    Raises :class:`InputError` for non-UTF-8 bytes, invalid JSON, a line that is
    not a JSON object, and a file with no records at all.
    """
    seen = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:  # a byte-order mark (files saved by Windows editors) is allowed before the first line
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise InputError(path, number, f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise InputError(path, number, f"invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(value, dict):
                raise InputError(path, number, f"expected a JSON object, got {type(value).__name__}")
            seen += 1
            yield number, value
    if seen == 0:
        raise InputError(path, None, "file is empty: no JSON records")


class DiskFull(OSError):
    """A results file or folder could not be written because its disk is full (ENOSPC, or a quota: EDQUOT)."""


def _disk_full(err: OSError, target: Path) -> DiskFull | None:
    """:class:`DiskFull` naming ``target``, its folder and the space left, for a write that failed for want of space."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free there now"
    except OSError:
        free = "free space unknown"
    return DiskFull(err.errno, f"{target}: the disk is full (no space left on the device holding {target.parent}; "
                               f"{free}). Nothing was left under that name: free some space and run again")


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def dumps(record: dict[str, Any]) -> str:
    """The one JSONL serialisation used for every results file (stable, UTF-8)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and (full := _disk_full(err, target)) is not None:
            raise full from err
        raise


def atomic_write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Write records one per line, atomically; return the number written."""
    lines = [dumps(record) for record in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (fingerprints of data, models and adapters)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``target`` as a hard link to ``source`` (no bytes copied), or a copy where the filesystem cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # as a plain mkdir would make it, not mkdtemp's 0700
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFull) and (full := _disk_full(err, target)) is not None:
            raise full from err
        raise


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a results JSONL file that may be empty: a round-2 table with nothing to revote, an
    adapter's out-of-bag answers when its bag left nothing out (:func:`iter_jsonl` refuses empty files)."""
    if os.path.getsize(path) == 0:
        return []
    return [row for _, row in iter_jsonl(path)]
