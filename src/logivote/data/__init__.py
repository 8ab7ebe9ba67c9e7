"""Stage 1, data: the puzzles as one question per line, the bags, and the prompt every later stage shares.

- :mod:`.contracts` — the shape of every file under ``results/``, written down once.
- :mod:`.jsonl` — reading JSONL with ``file:line`` errors, atomic writes.
- :mod:`.flatten` — rule ``flatten`` (:func:`~.flatten.flatten`).
- :mod:`.bagging` — rules ``dev_split`` and ``subset`` (seeded 80 % bags and their out-of-bag ids).
- :mod:`.prompt` — the chat prompt and the answer letter, for training and serving alike.
- :mod:`.sample_data` — the embedded sample and the generated puzzles of pre-training.

Imports nothing from the other stages.
"""
