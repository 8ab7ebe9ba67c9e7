"""A vLLM OpenAI-compatible server that lives exactly as long as a ``with`` block.

:class:`VllmServer` binds to 127.0.0.1 on a free port, starts the server in a
process group of its own (so its engine processes can be stopped with it),
waits for ``GET /health`` up to a timeout, and always stops the whole group on
the way out: on success, on an exception in the block, on SIGTERM/SIGINT
(Snakemake's Ctrl-C), and — through its :mod:`~logivote.serving.guard`, the group's leader — when the
process that started it is killed outright. If the server never becomes healthy or
dies, the error starts with the engine's own exception from its log (:func:`failure_summary`), then
the log's path (or, where the log names no exception, its tail). ``while_starting``: a check of the caller's that
runs in the caller's process while the server starts (its imports keep one core busy for tens of seconds); if it
raises, the server is stopped at once and its exception is the one raised.

Each server gets a fresh random API key (:attr:`VllmServer.api_key`): on a shared machine or a SLURM
node every other user could otherwise query it on 127.0.0.1 and read the adapters' answers. The key
reaches vLLM through its environment (``VLLM_API_KEY``: unlike argv, other users cannot read a
process's environment) and the client through :attr:`api_key`; it is written to no log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import requests

from logivote.serving import guard

log = logging.getLogger(__name__)

ENTRY_MODULE = "logivote.serving.vllm_entry"  # vLLM's OpenAI server, keeping a CPU server's `fork` if asked (its docstring)

# Thread-count variables that Snakemake sets from a job's `threads:`. vLLM's CPU backend binds its
# own OpenMP threads to cores; with these set it ran 7-8x slower here (10 vs 80 answers/s), so the
# server does not inherit them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class ServerError(RuntimeError):
    """The server did not start, or died; the message starts with the cause found in its log (:func:`failure_message`)."""


@dataclass(frozen=True, kw_only=True)
class VllmOptions:
    """The vLLM options config ``serve`` sets (config/README.md), said once: :class:`ServerSpec` and the workflow's
    :class:`logivote.serving.inference.ServeSettings` both extend it."""

    dtype: str = "bfloat16"
    max_model_len: int = 2048
    max_loras: int = 4
    max_lora_rank: int = 8
    prefix_caching: bool = True
    block_size: int | None = None  # KV-cache block (and prefix-cache hit) granularity in tokens; None: vLLM's default
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    health_timeout_s: float = 600.0

    def vllm_options(self) -> dict[str, Any]:
        """These options alone, by name (from a subclass too)."""
        return {f.name: getattr(self, f.name) for f in fields(VllmOptions)}


@dataclass(frozen=True, kw_only=True)
class ServerSpec(VllmOptions):
    """How to start one server: a model, its LoRA adapters (name → folder) and vLLM's options."""

    model: str
    adapters: Mapping[str, str] = field(default_factory=dict)
    served_name: str = "base"
    command: Sequence[str] | None = None  # replaces "python -m vllm..." (tests use a stand-in)

    def argv(self, port: int) -> list[str]:
        base = list(self.command) if self.command else [sys.executable, "-m", ENTRY_MODULE]
        args = [
            "--model", self.model, "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
        ]
        if self.block_size is not None:
            args += ["--block-size", str(self.block_size)]
        if self.adapters:
            args += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                     # keep every adapter in host memory: evicted ones would be re-read from disk
                     "--max-cpu-loras", str(max(self.max_loras, len(self.adapters))),
                     "--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        return base + args + list(self.extra_args)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: str | os.PathLike[str], lines: int = 40) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


# "(EngineCore pid=12) ERROR 12-03 08:56:26 [core.py:1510] text": vLLM's logger prefix, with the level
_VLLM_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d [\d:]+ \[[^\]]*\] ?")
# the last line of a Python traceback: "AttributeError: ...", "torch.OutOfMemoryError: ...", "KeyboardInterrupt"
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")
_TRACEBACK_PART = re.compile(r"^(?:\s|Traceback |During handling |The above exception |\^)")


def failure_summary(path: str | os.PathLike[str], error_lines: int = 5) -> str:
    """What killed a vLLM server, from its log: the engine's own exception first, then its ERROR lines.

    The cause is the first exception line vLLM logged at ERROR level (the engine's traceback, which
    comes before the API server's "Engine core initialization failed" or shutdown messages), else the
    last line of the log's last plain traceback. Shutdown chatter, leak warnings and traceback frames
    are left out; the full log is one path away. Empty when the log names no exception or error.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    logged_exceptions, plain_exceptions, errors = [], [], []
    for line in lines:
        prefix = _VLLM_PREFIX.match(line)
        text = line[prefix.end():] if prefix else line
        if _EXCEPTION.match(text):
            (logged_exceptions if prefix and prefix.group(1) in ("ERROR", "CRITICAL") else plain_exceptions).append(text.strip())
        elif prefix and prefix.group(1) in ("ERROR", "CRITICAL") and not _TRACEBACK_PART.match(text) and text.strip():
            if text.strip() not in errors:
                errors.append(text.strip())
    cause = (logged_exceptions or plain_exceptions[-1:] or [""])[0]
    shown = [e for e in errors if e != cause][:error_lines]
    return "\n".join([cause, *(f"  ERROR: {e}" for e in shown)]).strip()


def failure_message(what: str, path: str | os.PathLike[str]) -> str:
    """``what`` happened to the server: its cause (:func:`failure_summary`) first, then the log's path."""
    summary = failure_summary(path)
    if summary:
        return f"{what}: {summary}\n(full server log: {path})"
    return f"{what}; no exception in its log; last lines of {path}:\n{log_tail(path)}"


class VllmServer:
    """``with VllmServer(spec, log_path) as server: server.url`` — see the module docstring."""

    def __init__(self, spec: ServerSpec, log_path: str | os.PathLike[str], while_starting: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.log_path = Path(log_path)
        self.while_starting = while_starting
        self.port = 0
        self.api_key = ""  # set by start(): the key a request to /v1/* must carry (Authorization: Bearer)
        self.process: subprocess.Popen[bytes] | None = None
        self._old_handlers: dict[int, Any] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> VllmServer:
        self._install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_signal_handlers()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._restore_signal_handlers()

    def start(self) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.spec.argv(self.port)
        env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        env.update(self.spec.env)
        self.api_key = secrets.token_urlsafe(32)
        env["VLLM_API_KEY"] = self.api_key  # never on the command line, which `ps` shows every user
        with open(self.log_path, "wb") as out:
            out.write(("$ " + " ".join(argv) + "\n").encode())
            out.flush()
            env[guard.PARENT_VAR] = str(os.getpid())
            self.process = subprocess.Popen([sys.executable, "-m", guard.__name__, *argv], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.info("started vLLM server pid %d on %s (log: %s)", self.process.pid, self.url, self.log_path)
        if self.while_starting is not None:
            self.while_starting()  # raising: __enter__ stops the server
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.spec.health_timeout_s
        started = time.monotonic()
        while True:
            self.check_alive()
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    log.info("vLLM server healthy after %.0f s", time.monotonic() - started)
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerError(failure_message(f"vLLM server not healthy within {self.spec.health_timeout_s:.0f} s", self.log_path))
            time.sleep(1.0)

    def check_alive(self) -> None:
        """Raise :class:`ServerError` if the server process has exited."""
        if self.process is not None and (code := self.process.poll()) is not None:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise ServerError(failure_message(f"vLLM server (pid {self.process.pid}) {how}", self.log_path))

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        if self.process is None:
            return
        pgid = self.process.pid  # the guard leads a session and group of its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("vLLM server did not stop within %.0f s: SIGKILL", grace_s)
        # the group may outlive its leader (engine processes): make sure none is left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        log.info("vLLM server pid %d stopped", self.process.pid)
        self.process = None

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"received signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # only possible in the main thread
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, old)
        self._old_handlers.clear()
