"""Stage of ``rules/studies.smk``: the exact toy-world studies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from powersampling import io
from powersampling.errors import UserError


def toy_study(name: str, settings: dict[str, Any], *, seed: int, table_path, plot_path):
    """One exact study on a random tiny model whose answers can all be enumerated.

    The model has ``vocab_size`` tokens, the last of which is EOS; prompts are seeded
    random sequences of two non-EOS tokens. The studies are those of
    :data:`powersampling.toy.studies.STUDIES`.
    """
    from powersampling.toy.enumerate import random_tiny_model
    from powersampling.toy.studies import STUDIES

    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    study = STUDIES[name]
    vocab = settings["vocab_size"]
    model = random_tiny_model(vocab, seed=seed, init_std=settings["init_std"])
    eos = [vocab - 1]
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab - 1, size=2).tolist() for _ in range(settings["prompts"])]
    table = study.compute(model, prompts, eos, settings, seed=seed)
    io.write_table(table, table_path)
    study.plot(table, Path(plot_path))
    return table
