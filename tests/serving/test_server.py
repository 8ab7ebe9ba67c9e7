"""Server lifecycle with a stand-in server process (the real vLLM server is in test_e2e.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from logivote.serving.guard import processes
from logivote.serving.server import ServerError, ServerSpec, VllmServer

FAKE = str(Path(__file__).with_name("fake_openai.py"))


def alive(pid: int) -> bool:
    return pid in processes()  # a zombie is not alive


def wait_gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def make_question(i: int) -> dict:
    """Question ``p#i`` of a two-option puzzle ``p``: what the stand-in server needs to answer."""
    return {"qid": f"p#{i}", "puzzle_id": "p", "question_index": i, "source": "s", "problem": "?", "question": "?",
            "options": ["x", "y"], "answer": None}


def fake_spec(mode: str = "ok", **kw: object) -> ServerSpec:
    # argv(port) appends vLLM's flags; this stand-in reads only the port after "--port"
    script = (f"import sys, runpy; port = sys.argv[sys.argv.index('--port') + 1]; sys.argv = ['{FAKE}', port, '{mode}']; "
              f"runpy.run_path('{FAKE}', run_name='__main__')")
    return ServerSpec(model="m", command=[sys.executable, "-c", script], **kw)  # type: ignore[arg-type]


def test_starts_waits_for_health_and_stops_the_whole_group(tmp_path: Path) -> None:
    with VllmServer(fake_spec(health_timeout_s=30), tmp_path / "server.log") as server:
        pid = server.process.pid
        import requests

        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        assert server.url.startswith("http://127.0.0.1:")
    assert wait_gone(pid)
    assert "fake server starting" in (tmp_path / "server.log").read_text()


def test_each_server_answers_only_requests_with_its_own_key(tmp_path: Path) -> None:
    """A fresh random key per server, in its environment (VLLM_API_KEY), never in argv or a log; the workflow's
    client sends it. The real vLLM's refusal is checked in test_e2e (Ctrl-C test, while its server is up)."""
    import requests

    from logivote.serving.client import AnswerCache, Ask, ClientSettings, ask_all

    keys = []
    for run in range(2):
        with VllmServer(fake_spec(health_timeout_s=30), tmp_path / f"server{run}.log") as server:
            keys.append(server.api_key)
            assert len(server.api_key) >= 32
            with open(f"/proc/{server.process.pid}/environ", "rb") as env:
                assert f"VLLM_API_KEY={server.api_key}".encode() in env.read().split(b"\0")
            with open(f"/proc/{server.process.pid}/cmdline", "rb") as cmdline:
                assert server.api_key.encode() not in cmdline.read()
            body = {"model": "lora-B", "messages": []}
            assert requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=5).status_code == 401
            wrong = {"Authorization": "Bearer not-the-key"}
            assert requests.post(f"{server.url}/v1/chat/completions", json=body, headers=wrong, timeout=5).status_code == 401
            question = make_question(0)
            cache = AnswerCache(str(tmp_path / f"cache{run}.jsonl"))
            answers = ask_all(server.url, [Ask("lora-B", "fp", question)], cache, ClientSettings(threads=2, retries=0),
                              api_key=server.api_key)
            cache.close()
            assert [a.answer for a in answers.values()] == ["B"]
        assert server.api_key not in (tmp_path / f"server{run}.log").read_text()
    assert keys[0] != keys[1]


def test_a_check_while_starting_runs_before_the_health_wait_and_its_failure_stops_the_server(tmp_path: Path) -> None:
    """``while_starting`` runs in the caller once the server's process is up and before it is healthy (the prompt check
    overlaps the server's imports); its exception is the one raised, and the server's whole group is stopped."""
    seen: list[int] = []

    class Refused(ValueError):
        pass

    def check() -> None:
        seen.append(server.process.pid)
        assert alive(server.process.pid)
        raise Refused("prompt too long")

    spec = ServerSpec(model="m", health_timeout_s=600, command=[sys.executable, "-c", "import time; time.sleep(600)"])  # never healthy
    server = VllmServer(spec, tmp_path / "server.log", while_starting=check)
    started = time.monotonic()
    with pytest.raises(Refused, match="prompt too long"):
        with server:
            pass
    assert time.monotonic() - started < 10  # not the 600 s health timeout: the check's failure stopped it at once
    (pid,) = seen
    assert wait_gone(pid) and server.process is None
    passed: list[bool] = []
    with VllmServer(fake_spec(health_timeout_s=30), tmp_path / "ok.log", while_starting=lambda: passed.append(True)) as ok:
        assert passed == [True] and ok.process is not None


def test_never_healthy_fails_within_the_timeout_with_the_log_tail(tmp_path: Path) -> None:
    spec = ServerSpec(model="m", health_timeout_s=3, command=[sys.executable, "-c", "import time; print('still booting', flush=True); time.sleep(600)"])
    server = VllmServer(spec, tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        with server:
            pass
    # measured 3.0 s: the stand-in stops at once on SIGTERM; 3 s of timeout, a health poll (1 s) and 4 s of margin
    assert time.monotonic() - started < 3 + 1 + 4
    assert "not healthy within 3 s" in str(info.value) and "still booting" in str(info.value)
    assert server.process is None


def test_server_that_exits_at_start_reports_its_status_and_log(tmp_path: Path) -> None:
    spec = ServerSpec(model="m", health_timeout_s=60, command=[sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)"])
    with pytest.raises(ServerError, match=r"(?s)exited with status 3.*bad flag --x"):
        with VllmServer(spec, tmp_path / "server.log"):
            pass


def test_a_server_that_dies_at_its_first_request_names_the_engines_exception_first(tmp_path: Path) -> None:
    """vLLM's engine dies on the first request and the API server exits with status 0 after pages of shutdown
    chatter and leak warnings: the error's first line is the engine's own exception, then its ERROR lines and the
    log's path, and none of the chatter."""
    from logivote.serving.client import AnswerCache, Ask, ClientSettings, ask_all

    question = make_question(0)
    cache = AnswerCache(str(tmp_path / "cache.jsonl"))
    log_path = tmp_path / "vllm" / "predict.log"
    with pytest.raises(ServerError) as info:
        with VllmServer(fake_spec("die", health_timeout_s=30), log_path) as server:
            pid = server.process.pid
            ask_all(server.url, [Ask("lora-B", "fp", question)], cache, ClientSettings(threads=2, retries=3, backoff_s=0.2),
                    alive=server.check_alive, api_key=server.api_key)
    cache.close()
    message = str(info.value)
    assert message.splitlines()[0] == (f"vLLM server (pid {pid}) exited with status 0: "
                                       "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'")
    assert "ERROR: EngineCore encountered a fatal error." in message
    assert message.splitlines()[-1] == f"(full server log: {log_path})"
    assert "nanobind" not in message and "Shutting down" not in message and "File " not in message
    assert "nanobind" in log_path.read_text()  # the chatter was there, and left out


def test_a_request_that_fails_for_good_stops_the_phase_within_seconds(tmp_path: Path) -> None:
    """Issue 31, point 5: an HTTP 4xx other than 408/429 cannot succeed on retry. With 15 requests in flight for 60 s
    each (and 6 tries of 600 s allowed), the phase stops at once: no retry, queued requests dropped, the server
    stopped, and the error names the adapter, the question and the server's answer."""
    from logivote.serving.client import AnswerCache, Ask, ClientSettings, RequestFailed, ask_all

    asks = [Ask("lora-A", "fp", make_question(i)) for i in range(15)] + [Ask("lora-R", "fp", make_question(99))]
    asks += [Ask("lora-B", "fp", make_question(i)) for i in range(40)]  # queued behind the first 16
    cache = AnswerCache(str(tmp_path / "cache.jsonl"))
    with pytest.raises(RequestFailed) as info:
        with VllmServer(fake_spec("reject", health_timeout_s=30), tmp_path / "server.log") as server:
            pid = server.process.pid
            started = time.monotonic()
            ask_all(server.url, asks, cache, ClientSettings(threads=16, timeout_s=600, retries=5, backoff_s=0.5),
                    alive=server.check_alive, api_key=server.api_key)
    elapsed = time.monotonic() - started
    cache.close()
    assert elapsed < 10, f"the phase took {elapsed:.1f} s to stop after a final error"
    assert str(info.value).startswith("adapter lora-R, question p#99: the server answered HTTP 400 (final, not retried): ")
    assert "The model `lora-R` does not exist." in str(info.value)
    assert wait_gone(pid, 5)
    assert cache.entries == {}


def test_failure_summary_falls_back_to_the_last_plain_traceback(tmp_path: Path) -> None:
    from logivote.serving.server import failure_summary

    log = tmp_path / "server.log"
    log.write_text("INFO starting\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "    boom()\nValueError: first\nTraceback (most recent call last):\n  File \"y.py\", line 2\n"
                   "torch.OutOfMemoryError: out of memory\nnanobind: leaked 3 instances\n")
    assert failure_summary(log) == "torch.OutOfMemoryError: out of memory"
    log.write_text("INFO starting\nall fine\n")
    assert failure_summary(log) == ""


def test_a_failing_consumer_still_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with VllmServer(fake_spec(health_timeout_s=30), tmp_path / "server.log") as server:
            pid = server.process.pid
            1 / 0  # noqa: B018
    assert wait_gone(pid)


@pytest.mark.parametrize("which", ["guard", "server"])
def test_killed_server_is_detected(tmp_path: Path, which: str) -> None:
    """SIGKILL to the group's leader (the guard) or to the server under it: the rule sees the server killed by signal 9."""
    with VllmServer(fake_spec(health_timeout_s=30), tmp_path / "server.log") as server:
        guard = server.process.pid
        (child,) = map(int, Path(f"/proc/{guard}/task/{guard}/children").read_text().split())
        os.kill(guard if which == "guard" else child, signal.SIGKILL)
        server.process.wait(timeout=10)
        with pytest.raises(ServerError, match="killed by signal 9"):
            server.check_alive()


PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_server import fake_spec
    from logivote.serving.server import VllmServer
    with VllmServer(fake_spec({mode!r}, health_timeout_s=30), sys.argv[1]) as server:
        print(server.process.pid, flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_server_outlives_its_parent(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT), Snakemake stopping a job (SIGTERM) and SIGKILL of the parent all stop the server."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(tests=str(Path(__file__).parent), mode="ok"), str(tmp_path / "s.log")],
                              stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    assert alive(server_pid)
    parent.send_signal(sig)
    parent.wait(timeout=60)
    assert wait_gone(server_pid), f"server {server_pid} outlived its parent after {sig.name}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_engine_process_outlives_a_killed_parent(tmp_path: Path, sig: signal.Signals) -> None:
    """The server's own children (vLLM's engine core) go too when the rule's process is killed outright, also when
    the server itself would die at once on SIGTERM and leave them (the fault-injection bench saw three such)."""
    log = tmp_path / "s.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(tests=str(Path(__file__).parent), mode="engine"), str(log)],
                              stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    (engine_pid,) = [int(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith("engine pid")]
    assert alive(server_pid) and alive(engine_pid)
    parent.send_signal(sig)
    parent.wait(timeout=60)
    assert wait_gone(server_pid, 30), f"server {server_pid} outlived its parent after {sig.name}"
    assert wait_gone(engine_pid, 30), f"the server's child {engine_pid} outlived the rule's process after {sig.name}"
