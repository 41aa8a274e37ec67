"""Stages of ``rules/metrics.smk``: the metric tables over every graded shard, and
AlpacaEval's export and judge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log
from powersampling.stages.html import accuracy_html


def collect_metrics(
    *,
    graded_paths: Sequence[str],
    methods: dict[str, dict],
    n_boot: int,
    level: float,
    seed: int,
    outputs: dict[str, str],
    log: Log = no_log,
) -> pd.DataFrame:
    """Write the accuracy, pass@k, acceptance and sampler-trace tables (Parquet + CSV) and
    the accuracy table as HTML."""
    from powersampling import metrics

    graded = io.read_parquet(list(graded_paths))
    if graded.empty:
        raise UserError("no graded rows to collect metrics from")
    # Tasks judged elsewhere (AlpacaEval) have no verdict here and no place in accuracies.
    graded = graded[graded["grader"] != "none"]
    if graded.empty:
        raise UserError("no task in this config is graded here (only judge-graded tasks)")
    accuracy = metrics.accuracy_table(graded, methods, n_boot=n_boot, level=level, seed=seed)
    io.write_table(accuracy, outputs["accuracy"])
    by_difficulty = metrics.accuracy_by_difficulty(graded, n_boot=n_boot, level=level, seed=seed)
    io.write_table(by_difficulty, outputs["accuracy_by_difficulty"])
    io.write_table(metrics.pass_at_k_table(graded), outputs["pass_at_k"])
    io.write_table(metrics.acceptance_by_block(graded), outputs["acceptance"])
    io.write_table(metrics.sampler_trace_table(graded), outputs["sampler_trace"])
    io.write_text_atomic(outputs["accuracy_html"], accuracy_html(accuracy, level))
    log(f"metrics over {len(graded)} graded rows from {len(graded_paths)} shards")
    return accuracy


def export_alpaca_eval(
    *,
    generation_paths: Sequence[str],
    data_path,
    generator: str,
    seed: int,
    out_path,
    log: Log = no_log,
) -> int:
    """One run's outputs (the rows of ``seed`` in its shards) as alpaca_eval's JSON list
    (instruction, output, generator, dataset)."""
    from powersampling.tasks import alpaca

    generations = io.read_parquet(list(generation_paths))
    generations = generations[generations["seed"] == seed]
    if generations.empty:
        raise UserError(f"no generations of seed {seed} in {list(generation_paths)}")
    count = alpaca.export_alpaca_eval(generations, generator, out_path, pd.read_parquet(data_path))
    log(f"exported {count} outputs of {generator} to {out_path}")
    return count


def judge_alpaca_eval(outputs_path, out_dir, *, judge: dict[str, Any], log: Log = no_log):
    """Run alpaca_eval's judge into ``out_dir`` (built beside it, renamed when complete)."""
    from powersampling.tasks.alpaca import run_alpaca_eval_judge

    out_dir = Path(out_dir)
    with io.atomic_dir(out_dir) as work:
        leaderboard = run_alpaca_eval_judge(
            outputs_path, work, annotator=judge["annotator"], api_key_env=judge["api_key_env"]
        )
    log(f"judged {outputs_path}: {out_dir / leaderboard.name}")
