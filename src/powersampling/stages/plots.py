"""Stage of ``rules/plots.smk``: one report figure drawn from its table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from powersampling.errors import UserError


def plot(name: str, table_path, out_path) -> None:
    """Draw the report figure ``name`` of :data:`powersampling.plots.FIGURES` from its table."""
    from powersampling.plots import FIGURES

    if name not in FIGURES:
        raise UserError(f"unknown plot {name!r}; known: {', '.join(FIGURES)}")
    FIGURES[name].draw(pd.read_parquet(table_path), Path(out_path))
