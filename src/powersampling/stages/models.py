"""Stages of ``rules/models.smk``: the model folders generation reads (the toy model
trained, a rehearsal model built, a hub model staged at one commit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from powersampling.stages.common import Log, no_log


def train_toy_model(
    settings: dict[str, Any],
    *,
    holdout_paths: Sequence[str],
    seed: int,
    out_dir,
    threads: int = 1,
    log: Log = no_log,
) -> dict:
    """Train the toy model with the evaluation problems held out of its training data."""
    import torch

    from powersampling.toy import train

    torch.set_num_threads(threads)
    holdout = set()
    for path in holdout_paths:
        holdout.update(pd.read_parquet(path, columns=["question"])["question"])
    log(f"training the toy model with {settings}; {len(holdout)} questions held out")
    return train.train_toy_model(
        out_dir,
        model_shape=settings.get("model_shape"),
        train=settings.get("train"),
        holdout_questions=holdout,
        seed=seed,
        log=log,
    )


def build_rehearsal_model(model: dict[str, Any], *, seed: int, out_dir, log: Log = no_log) -> dict:
    """A randomly initialised model of a published architecture, with its real tokenizer,
    saved as a local model folder (read by generation exactly as a downloaded model is)."""
    from powersampling.rehearsal import build_rehearsal_model as build

    settings = model["rehearsal"]
    log(f"building a rehearsal model of {settings['architecture']} with {settings}")
    described = build(
        settings["architecture"],
        out_dir,
        num_hidden_layers=settings.get("num_hidden_layers"),
        seed=seed,
        dtype=model.get("dtype", "auto"),
    )
    log(f"built {described}")
    return described


def download_model(source: str, *, revision: str | None, out_dir, log: Log = no_log) -> dict:
    """Stage the hub model ``source`` at one commit into ``out_dir`` (see models.download_model)."""
    from powersampling.models import download_model as download

    return download(source, out_dir, revision=revision, log=log)
