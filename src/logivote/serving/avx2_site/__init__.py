"""``sitecustomize`` for a vLLM server started as on an AVX2-only CPU (``serve.cpu_build: avx2``,
:func:`logivote.serving.serving_path.server_env` puts this folder on the server's ``PYTHONPATH``)."""
