"""Stage 4, ensemble: the adapters' answers become votes, a submission and an evaluation.

- :mod:`.voting` — rules ``vote`` (:func:`~.voting.vote`) and ``submission`` (:func:`~.voting.submission`):
  majority, the second round's rule, the competition format.
- :mod:`.evaluation` — rule ``evaluate``: ``metrics.json``, baselines, :func:`~.evaluation.learning_relations`.
- :mod:`.plots` — rules ``plots`` and ``loss_curves``.

Imports only the stages below it (data; training for the loss curves' reader).
"""
