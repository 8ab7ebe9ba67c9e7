"""Stage 5, serving: vLLM servers with the adapters, the client that asks them, the two rounds.

- :mod:`.inference` — rules ``predict`` (:func:`~.inference.predict_shard`, one of ``serve.shards``),
  ``link_prediction``, ``serving_record`` and ``revote`` (:func:`~.inference.revote`).
- :mod:`.serving_path` — int4 or dequantized: which form of the base a server can run, decided first.
- :mod:`.server` — one vLLM server for the length of a ``with`` block; a dead one's cause in its error.
- :mod:`.client` — 64 threads, retries, the answer cache, a final error stopping the phase.

The top stage: imports any stage below it, and nothing imports it.
"""
