"""The HTTP client: many threads asking one server for one constrained letter each.

Every request is a chat completion for one (adapter, question, sample) with
the shared prompt (:func:`logivote.data.prompt.chat_messages`), ``max_tokens: 1``
and ``structured_outputs: {"choice": <that question's letters>}``, with
logprobs. A reply that is not one of the letters is stored as ``"invalid"``
and counted, never a crash. Failed requests are retried with exponential
backoff; each answer is appended to a cache file as it arrives, so a rerun
after a crash asks only what is missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from ..data.contracts import INVALID, Question, letters_for
from ..data.jsonl import dumps
from ..data.prompt import chat_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ask:
    """One request: ``model`` is the server's name for the adapter; ``fingerprint`` identifies its weights."""

    model: str
    fingerprint: str
    question: Question
    sample: int = 0
    temperature: float = 0.0
    seed: int | None = None
    free_text_tokens: int = 0  # > 0: the recipe's way, free generation of up to this many tokens, letter parsed from text

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(self.question),
            "max_tokens": 1,
            "temperature": self.temperature,
            "logprobs": True,
            "top_logprobs": 5,
            "structured_outputs": {"choice": letters_for(len(self.question["options"]))},
        }
        if self.free_text_tokens:
            body["max_tokens"] = self.free_text_tokens
            del body["structured_outputs"]
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    @functools.cached_property
    def key(self) -> str:
        """Cache key: adapter weights, question id, sample and the exact request (a changed prompt or adapter is asked again).

        Computed once per ask (it hashes the whole prompt) and looked up several times.
        """
        payload = json.dumps([self.fingerprint, self.question["qid"], self.sample, self.body()], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    model: str
    qid: str
    sample: int
    answer: str  # a letter of the question's options, or "invalid"
    logprob: float | None


def parse_reply(body: dict[str, Any], letters: Sequence[str], free_text: bool = False) -> tuple[str, float | None]:
    """The answer letter (or ``"invalid"``) and its logprob from a chat-completion reply.

    ``free_text``: the reply is free generation; its first standalone capital letter is the answer.
    """
    try:
        choice = body["choices"][0]
        text = (choice["message"].get("content") or "").strip()
    except (KeyError, IndexError, TypeError, AttributeError):
        return INVALID, None
    if free_text:
        found = re.search(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text)
        return (found.group(1), None) if found and found.group(1) in letters else (INVALID, None)
    logprob = None
    try:
        logprob = float(choice["logprobs"]["content"][0]["logprob"])
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return (text, logprob) if text in letters else (INVALID, None)


def cache_stem(path: Path) -> str:
    """``answers`` for ``answers.jsonl`` and for a shard's ``answers-1.jsonl``."""
    return path.stem.split("-")[0]


def shard_cache(path: str | os.PathLike[str], shard: int, shards: int) -> str:
    """The answer file shard ``shard`` of ``shards`` appends to: ``path`` itself when there is one shard."""
    target = Path(path)
    return str(target) if shards == 1 else str(target.with_name(f"{cache_stem(target)}-{shard}{target.suffix}"))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def read_answers(path: str | os.PathLike[str]) -> dict[str, Answer]:
    """Every answer in the cache ``path`` and its siblings ``answers-*.jsonl``, by ask key, as a run reads them
    (a line cut off by a crash is skipped with a warning); nothing is written."""
    path = Path(path)
    entries: dict[str, Answer] = {}
    family = {path, *path.parent.glob(f"{cache_stem(path)}-*{path.suffix}")}
    for file in sorted(f for f in family if f.exists()):
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                entries[row["key"]] = Answer(row["model"], row["qid"], row["sample"], row["answer"], row["logprob"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: unreadable cache line (cut off by a crash, or being written): ignored", file, number)
    return entries


class AnswerCache:
    """Append-only JSONL cache of answers keyed by :attr:`Ask.key` (safe across threads and crashes).

    ``path`` (``results/cache/answers.jsonl``) and its siblings ``answers-*.jsonl`` are read; this process
    appends to ``path`` alone. Jobs running side by side (the predict phase's shards) each write their own
    file (:func:`shard_cache`), and every later run, however it is split, finds every answer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.entries: dict[str, Answer] = read_answers(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")
        if self._handle.tell() and not _ends_with_newline(self.path):
            # a crash cut the last line short: end it, so that the next answer starts a line of its own rather than
            # joining the cut one (both would be unreadable at the next start)
            self._handle.write("\n")
            self._handle.flush()

    def add(self, key: str, answer: Answer) -> None:
        line = dumps({"key": key, **answer.__dict__})
        with self._lock:
            self.entries[key] = answer
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


@dataclass(frozen=True)
class ClientSettings:
    """Config key ``client`` (config/README.md)."""

    threads: int = 64
    timeout_s: float = 120.0
    retries: int = 5
    backoff_s: float = 0.5


class RequestFailed(RuntimeError):
    pass


class Stopped(RuntimeError):
    """Another request failed for good: this one gave up without retrying."""


def final_status(code: int) -> bool:
    """A client error that no retry can fix (HTTP 4xx but 408 Request Timeout and 429 Too Many Requests)."""
    return 400 <= code < 500 and code not in (408, 429)


def ask_one(session: requests.Session, url: str, ask: Ask, settings: ClientSettings, alive: Callable[[], None],
            stop: threading.Event | None = None) -> Answer:
    """POST one request, retrying with exponential backoff; ``alive()`` raises if the server is gone.

    ``stop`` set (another request failed for good) ends the retries at once with :class:`Stopped`.
    """
    stop = stop or threading.Event()
    letters = letters_for(len(ask.question["options"]))
    error: Exception | None = None
    for attempt in range(settings.retries + 1):
        if stop.is_set():
            raise Stopped(f"{ask.model} {ask.question['qid']}: stopped")
        alive()
        try:
            response = session.post(f"{url}/v1/chat/completions", json=ask.body(), timeout=settings.timeout_s)
            if response.status_code == 200:
                answer, logprob = parse_reply(response.json(), letters, free_text=ask.free_text_tokens > 0)
                return Answer(ask.model, ask.question["qid"], ask.sample, answer, logprob)
            if final_status(response.status_code):
                raise RequestFailed(f"adapter {ask.model}, question {ask.question['qid']}: the server answered "
                                    f"HTTP {response.status_code} (final, not retried): {response.text[:300]}")
            error = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        # ChunkedEncodingError: the reply broke off mid-body, e.g. the server died while sending it
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, ValueError) as err:
            error = err
        if attempt < settings.retries and stop.wait(settings.backoff_s * 2**attempt):
            raise Stopped(f"{ask.model} {ask.question['qid']}: stopped")
    alive()
    raise RequestFailed(f"adapter {ask.model}, question {ask.question['qid']}: failed after {settings.retries + 1} attempts: {error}")


def ask_all(url: str, asks: Sequence[Ask], cache: AnswerCache, settings: ClientSettings,
            alive: Callable[[], None] = lambda: None, desc: str = "answers", api_key: str = "") -> dict[str, Answer]:
    """Answer every ask (cached ones are not sent again); return answers by :attr:`Ask.key`.
    ``api_key``: the server's key (:attr:`logivote.serving.server.VllmServer.api_key`), sent as a bearer token."""
    todo = [ask for ask in asks if ask.key not in cache.entries]
    log.info("%d requests: %d cached, %d to ask with %d threads", len(asks), len(asks) - len(todo), len(todo), settings.threads)
    local = threading.local()
    stop = threading.Event()  # set when a request fails for good or the phase ends: no retry starts after that

    def work(ask: Ask) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            if api_key:
                local.session.headers["Authorization"] = f"Bearer {api_key}"
        try:
            cache.add(ask.key, ask_one(local.session, url, ask, settings, alive, stop))
        except BaseException:
            stop.set()
            raise

    if todo:
        started = time.monotonic()
        pool = ThreadPoolExecutor(settings.threads)
        try:
            with tqdm(total=len(todo), desc=desc, unit="req", mininterval=1.0) as bar:
                futures = [pool.submit(work, ask) for ask in todo]
                for future in futures:
                    future.add_done_callback(lambda _f: bar.update(1))
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in done if f.exception() is not None]
            if failed:
                # the first real failure, not a request that gave up because of it
                raise next((e for e in failed if not isinstance(e, Stopped)), failed[0])  # type: ignore[misc]
        finally:
            # on a failure (or Ctrl-C): no retry starts any more, queued requests are dropped, and this returns
            # without waiting for the ones in flight: the caller stops the server, which ends them
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
        elapsed = time.monotonic() - started
        log.info("asked %d in %.1f s (%.1f answers/s)", len(todo), elapsed, len(todo) / max(elapsed, 1e-9))
    return {ask.key: cache.entries[ask.key] for ask in asks}
