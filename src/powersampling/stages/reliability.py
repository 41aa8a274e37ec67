"""Stage of ``rules/reliability.smk``: the temperature-reliability tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.stages.common import Log, no_log
from powersampling.stages.html import reliability_html


def collect_reliability(
    *,
    paths: Sequence[str],
    prompts: dict[str, str],
    study: dict[str, Any],
    report: dict[str, Any],
    seed: int,
    outputs: dict[str, str],
    log: Log = no_log,
) -> dict[str, pd.DataFrame]:
    """The reliability tables (:mod:`powersampling.reliability`) over the study's graded
    shards: ``reliability`` (also as HTML), ``reliability_bins`` and ``failures``.
    ``prompts``: task → its prompt style (``instruction`` asks for the bare number)."""
    from powersampling.reliability import annotate, reliability_tables

    graded = io.read_parquet(list(paths))
    graded = graded[
        graded["task"].isin(study["tasks"])
        & graded["model"].isin(study["models"])
        & graded["method"].isin(study["methods"])
    ]
    rows = annotate(graded, {t: style == "instruction" for t, style in prompts.items()})
    tables = reliability_tables(
        rows,
        n_boot=report["bootstrap_samples"],
        level=report["ci_level"],
        seed=seed,
        bins=study["calibration_bins"],
    )
    for name, table in tables.items():
        io.write_table(table, outputs[name])
    io.write_text_atomic(outputs["html"], reliability_html(tables["reliability"]))
    shown = ["task", "model", "method", "accuracy_strict", "accuracy_lenient", "compliance"]
    log(tables["reliability"][shown].to_string(index=False))
    return tables
