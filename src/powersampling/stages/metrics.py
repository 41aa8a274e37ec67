"""Stages of ``rules/metrics.smk``: the metric tables over every graded shard, the time
plan against what the generation jobs spent, and AlpacaEval's export and judge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log
from powersampling.stages.html import ACCURACY_STYLE, accuracy_html, html_page, html_table


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


def collect_cost(
    *,
    generation_paths: Sequence[str],
    config: dict[str, Any],
    calibration_paths: Sequence[str],
    outputs: dict[str, str],
    log: Log = no_log,
) -> pd.DataFrame:
    """The cost table (:func:`powersampling.plan.cost.cost_table`: predicted against actual
    decode time and tokens per (task, model, method)) as Parquet, CSV and an HTML page, from
    the time plan with the config's calibrations (``calibration_paths``, each
    ``<folder>/<task>/<model>/<method>.parquet``)."""
    from powersampling.plan import time_plan
    from powersampling.plan.cost import cost_table, job_comparison

    columns = ["task", "model", "method", "seed", "shard", "tokens_decoded"]
    columns.append("shard_decode_time_s")
    generations = pd.concat(
        [pd.read_parquet(path, columns=columns) for path in generation_paths], ignore_index=True
    )
    folder = Path(calibration_paths[0]).parents[2] if calibration_paths else None
    plan = time_plan(config, calibration_dir=folder)
    table = cost_table(plan, generations)
    io.write_table(table, outputs["cost"])
    io.write_text_atomic(outputs["cost_html"], cost_html(table))
    jobs = job_comparison(plan, generations)
    log(
        f"cost of {len(jobs)} generation jobs: predicted decode time off by "
        f"{jobs['decode_error'].abs().median():.0%} (median), "
        f"{table['calibrated'].sum()} of {len(table)} (task, model, method) calibrated"
    )
    return table


def cost_html(table: pd.DataFrame) -> str:
    """The cost table as a small standalone HTML page for the report."""
    shown = table[
        ["task", "model", "method", "jobs", "answers", "calibrated", "tokens_from"]
    ].copy()
    shown["tokens / answer (predicted, actual)"] = [
        f"{p:,.0f}, {a:,.0f}"
        for p, a in zip(
            table["predicted_tokens_per_answer"], table["tokens_per_answer"], strict=True
        )
    ]
    shown["decode s (predicted, actual)"] = [
        f"{p:,.1f}, {a:,.1f}"
        for p, a in zip(table["predicted_decode_s"], table["decode_s"], strict=True)
    ]
    for name in ["decode_error", "median_job_error", "worst_job_error"]:
        shown[name] = [f"{e:+.0%}" for e in table[name]]
    heading = "<h3>Time plan against the generation jobs: decode time and tokens</h3>"
    return html_page("Cost", heading + html_table(shown), style=ACCURACY_STYLE)


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
