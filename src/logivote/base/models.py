"""The base model: built locally (``tiny``, optionally quantized to GPTQ-Int4), downloaded (``huggingface`` / ``modelscope``) or given (``local``).

Config key ``base_model`` (config/README.md) selects the source. Downloads go
to ``<out>.partial`` first, where the hub clients resume an interrupted
transfer, and are renamed to ``<out>`` only when complete; Snakemake then
skips the rule as long as the folder exists.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pretrain import PretrainSettings
from .quantize import QuantizeSettings, build_quantized
from .tiny_model import TinyShape, build_from_questions

log = logging.getLogger(__name__)

HUBS = ("huggingface", "modelscope")


def model_dir(spec: dict[str, Any]) -> str:
    """Where the base model lives for this config (the rule's output, or the given local path)."""
    source = spec["source"]
    if source == "local":
        return str(spec["path"])
    if source == "tiny":
        return "results/base_model/tiny"
    return "resources/models/" + spec["repo"].replace("/", "--")


def download(hub: str, repo: str, revision: str | None, out_dir: str | os.PathLike[str]) -> None:
    target = Path(out_dir)
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (revision %s) from %s into %s", repo, revision or "default", hub, partial)
    if hub == "huggingface":
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=repo, revision=revision, local_dir=partial)
    elif hub == "modelscope":
        from modelscope import snapshot_download as ms_snapshot_download  # extra: gpu-train

        ms_snapshot_download(model_id=repo, revision=revision, local_dir=str(partial))
    else:
        raise ValueError(f"unknown hub {hub!r}; expected one of {HUBS}")
    if not (partial / "config.json").exists():
        raise RuntimeError(f"download of {repo} finished without a config.json in {partial}")
    for cache in (".cache", "._____temp"):
        shutil.rmtree(partial / cache, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    log.info("base model ready in %s", target)


def tiny_settings(tiny: dict[str, Any]) -> tuple[PretrainSettings, QuantizeSettings, TinyShape]:
    """Config ``base_model.tiny`` split into its pre-training, its quantization and the model's shape."""
    tiny = dict(tiny)
    pretraining = PretrainSettings(**tiny.pop("pretrain", {}))
    quant, shape = QuantizeSettings.split(tiny)
    return pretraining, quant, shape


def prepare_base_model(*, spec: dict[str, Any], question_files: Sequence[str], out_dir: str, threads: int | None = None) -> None:
    """The ``base_model`` rule: build the tiny model (on ``threads`` CPU threads) or download the configured one."""
    source = spec["source"]
    if source == "tiny":
        if threads:
            import torch

            torch.set_num_threads(threads)
        pretraining, quant, shape = tiny_settings(spec.get("tiny", {}))
        if quant.quantize == "gptq-int4":
            build_quantized(question_files, out_dir, shape, quant, pretraining)
        else:
            build_from_questions(question_files, out_dir, shape, pretraining)
    elif source in HUBS:
        download(source, spec["repo"], spec.get("revision"), out_dir)
    else:
        raise FileNotFoundError(f"base_model.source is 'local' but base_model.path {out_dir!r} does not exist")
