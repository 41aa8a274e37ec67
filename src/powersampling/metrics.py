"""Metric tables from graded rows (see ``GRADED_SCHEMA`` in :mod:`powersampling.io`).

Each table has one row per (task, model, method) — or per k / block within it — and is
what the plots and the report read. Accuracy intervals resample problems, not rows,
because the seeds and chains of one problem share its difficulty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from powersampling.errors import UserError
from powersampling.samplers import SAMPLERS, method_params, sampler_class
from powersampling.seeding import derive_seed
from powersampling.stats import bootstrap_ci, pass_at_k_array

GROUP = ["task", "model", "method"]

ACCURACY_COLUMNS = [
    *GROUP,
    "sampler",
    "temperature",
    "alpha",
    "n_problems",
    "n_seeds",
    "n_samples",
    "accuracy",
    "ci_low",
    "ci_high",
    "compliance_rate",
    "extraction_failure_rate",
    "mean_new_tokens",
    "new_tokens_ci_low",
    "new_tokens_ci_high",
    "n_budget_cut",
    "mean_logp",
    "logp_ci_low",
    "logp_ci_high",
    "mean_tokens_decoded",
    "tokens_decoded_ci_low",
    "tokens_decoded_ci_high",
    "mean_steps_correct",
    "mean_blocks",
    "decode_time_s",
    "time_per_answer_s",
    "mean_chain_lifetime_s",
    "mean_acceptance_rate",
]
DIFFICULTY_COLUMNS = [
    *GROUP,
    "difficulty",
    "n_problems",
    "n_samples",
    "accuracy",
    "ci_low",
    "ci_high",
    "compliance_rate",
    "mean_steps_correct",
    "mean_new_tokens",
]
PASS_AT_K_COLUMNS = [*GROUP, "k", "pass_at_k"]
ACCEPTANCE_COLUMNS = [*GROUP, "block", "acceptance_rate", "mean_logp"]
SAMPLER_TRACE_COLUMNS = [*GROUP, "sampler", "stage", "field", "n_rows", "mean", "total"]


def _check_graded(graded: pd.DataFrame, required: list[str]) -> None:
    if not isinstance(graded, pd.DataFrame):
        raise UserError(f"graded rows must be a pandas DataFrame, got {type(graded).__name__}.")
    if graded.empty:
        raise UserError("the graded table is empty: there are no graded rows to aggregate.")
    missing = [c for c in required if c not in graded.columns]
    if missing:
        raise UserError(f"the graded table lacks the column(s) {missing}.")


def _correct(rows: pd.DataFrame) -> np.ndarray:
    """Correctness as 0/1; a row the grader could not decide (null) counts as wrong."""
    return rows["correct"].fillna(False).astype(bool).to_numpy(dtype=float)


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or all-NaN when the rows do not have it."""
    if name not in rows.columns:
        return pd.Series(np.nan, index=rows.index, dtype=float)
    return pd.to_numeric(rows[name], errors="coerce").astype(float)


def _mean(series: pd.Series) -> float:
    """Mean over non-null values; NaN (without a warning) when there are none."""
    series = series.dropna()
    return float(series.mean()) if len(series) else math.nan


def _single_value(series: pd.Series):
    """The one distinct non-null value of a column, or None when there are zero or several."""
    values = series.dropna().unique()
    return values[0] if len(values) == 1 else None


def _method_fields(method: str, rows: pd.DataFrame, config: Mapping | None) -> dict:
    """Sampler, temperature and alpha of a method: from its config where given, else the rows."""
    config = dict(config or {})
    sampler = config.get("sampler")
    if sampler is None and "sampler" in rows.columns:
        sampler = _single_value(rows["sampler"])
    temperature = config.get("T", config.get("temperature"))
    if temperature is None and sampler in SAMPLERS and sampler_class(sampler).DETERMINISTIC:
        temperature = 0.0  # always the most likely token: the T -> 0 limit
    if temperature is None:
        temperature = _single_value(_column(rows, "temperature"))
    alpha = config.get("alpha")
    return {
        "sampler": None if sampler is None else str(sampler),
        "temperature": math.nan if temperature is None else float(temperature),
        "alpha": math.nan if alpha is None else float(alpha),
    }


def _shard_decode_time(rows: pd.DataFrame) -> float:
    """Decoding wall time of the shards the rows come from, each shard counted once
    (NaN when the rows do not record it)."""
    if "shard_decode_time_s" not in rows.columns:
        return math.nan
    shard_keys = [c for c in ["seed", "shard"] if c in rows.columns]
    times = rows["shard_decode_time_s"]
    per_shard = times.groupby([rows[c] for c in shard_keys]).first() if shard_keys else times[:1]
    per_shard = pd.to_numeric(per_shard, errors="coerce").dropna()
    return float(per_shard.sum()) if len(per_shard) else math.nan


def accuracy_table(
    graded: pd.DataFrame,
    methods: Mapping[str, Mapping] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (task, model, method): accuracy with a problem-clustered CI, and costs.

    ``methods`` is the config's ``methods`` section (name → {sampler, T, alpha, ...});
    a method missing from it takes its sampler and temperature from the rows.
    ``temperature`` is the config's ``T``, 0 for greedy, else the rows' one temperature
    (for power sampling, the proposal's); ``alpha`` is the config's, NaN without. Null
    ``correct`` counts as wrong; ``compliance_rate`` is over rows where compliance is
    known. ``mean_tokens_decoded`` is the compute spent per sample including MCMC
    proposals; rows that do not record it (greedy, temperature) spent ``n_new_tokens``.
    ``decode_time_s`` adds up the decoding wall time of the group's shards (each counted
    once) and ``time_per_answer_s`` divides it by the answers, the same way for every
    sampler; ``mean_chain_lifetime_s`` is the mean elapsed time of power-sampling chains,
    which overlap in a batch and so are no per-answer cost. Each group's bootstrap seed is
    ``derive_seed(seed, task, model, method)``, so a group's interval does not depend on
    which other groups are in the table. ``n_budget_cut`` counts the rows whose prompt left
    less than the method's ``max_new_tokens`` in the model's context (their ``token_budget``).
    New tokens, log p and tokens decoded carry problem-clustered CIs as accuracy does.
    ``mean_steps_correct`` is the mean number of right reference steps of worked answers
    (NaN for other tasks); ``mean_blocks`` the mean number of blocks a power-sampling
    answer grew through (NaN for samplers without blocks).
    """
    _check_graded(graded, [*GROUP, "problem_id", "correct"])
    methods = methods or {}
    out = []
    for (task, model, method), rows in graded.groupby(GROUP, sort=True, dropna=False):
        correct = _correct(rows)
        accuracy, low, high = bootstrap_ci(
            correct,
            rows["problem_id"].astype(str).to_numpy(),
            n_boot=n_boot,
            level=level,
            seed=derive_seed(seed, task, model, method),
        )
        compliant = rows["compliant"] if "compliant" in rows.columns else pd.Series(dtype=object)
        extracted = rows["extracted"] if "extracted" in rows.columns else None
        new_tokens = _column(rows, "n_new_tokens")
        decoded = _column(rows, "tokens_decoded").fillna(new_tokens)
        decode_time = _shard_decode_time(rows)

        problems = rows["problem_id"].astype(str).to_numpy()
        boot = {"n_boot": n_boot, "level": level}
        group_seed = (seed, task, model, method)
        tokens, tokens_low, tokens_high = _mean_ci(
            new_tokens, problems, (*group_seed, "new_tokens"), **boot
        )
        logp, logp_low, logp_high = _mean_ci(
            _column(rows, "logp_sum"), problems, (*group_seed, "logp"), **boot
        )
        cost, cost_low, cost_high = _mean_ci(decoded, problems, (*group_seed, "decoded"), **boot)
        out.append(
            {
                "task": task,
                "model": model,
                "method": method,
                **_method_fields(method, rows, methods.get(method)),
                "n_problems": rows["problem_id"].nunique(),
                "n_seeds": rows["seed"].nunique() if "seed" in rows.columns else 1,
                "n_samples": len(rows),
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "compliance_rate": _mean(compliant.dropna().astype(float)),
                "extraction_failure_rate": (
                    math.nan if extracted is None else float(extracted.isna().mean())
                ),
                "mean_new_tokens": tokens,
                "new_tokens_ci_low": tokens_low,
                "new_tokens_ci_high": tokens_high,
                "n_budget_cut": _n_budget_cut(rows, methods.get(method)),
                "mean_logp": logp,
                "logp_ci_low": logp_low,
                "logp_ci_high": logp_high,
                "mean_tokens_decoded": cost,
                "tokens_decoded_ci_low": cost_low,
                "tokens_decoded_ci_high": cost_high,
                "mean_steps_correct": _mean(_column(rows, "steps_correct")),
                "mean_blocks": _mean_blocks(rows),
                "decode_time_s": decode_time,
                "time_per_answer_s": decode_time / len(rows),
                "mean_chain_lifetime_s": _mean(_column(rows, "chain_lifetime_s")),
                "mean_acceptance_rate": _mean(_column(rows, "acceptance_rate")),
            }
        )
    table = pd.DataFrame(out, columns=ACCURACY_COLUMNS)
    for name in ["n_problems", "n_seeds", "n_samples", "n_budget_cut"]:
        table[name] = table[name].astype("int64")
    return table


def _mean_ci(values: pd.Series, problems: np.ndarray, seed_parts: tuple, **boot):
    """Mean of the non-null values with a problem-clustered bootstrap CI."""
    known = values.notna().to_numpy()
    return bootstrap_ci(
        values.to_numpy()[known], problems[known], seed=derive_seed(*seed_parts), **boot
    )


def _max_new_tokens(method: Mapping | None) -> int | None:
    """A config method's token budget, its sampler's default filled in (None: unknown)."""
    if not method:
        return None
    if "max_new_tokens" in method:
        return method["max_new_tokens"]
    try:
        return method_params(method).get("max_new_tokens")
    except UserError:  # not a complete method (e.g. a table of hand-made rows)
        return None


def _n_budget_cut(rows: pd.DataFrame, method: Mapping | None) -> int:
    """Rows given fewer new tokens than the method's budget because the prompt left less
    room in the model's context (0 when the rows do not record their budget)."""
    budgets = _column(rows, "token_budget")
    if budgets.isna().all():
        return 0
    full = _max_new_tokens(method)
    if full is None:  # not in the config: the largest budget any row had
        full = budgets.max()
    return int((budgets < full).sum())


def _mean_blocks(rows: pd.DataFrame) -> float:
    """Mean number of blocks per answer, from the trace records that carry a ``block``."""
    if "sampler_trace" not in rows.columns:
        return math.nan
    counts = [
        sum("block" in record for record in _trace_entries(trace))
        for trace in rows["sampler_trace"]
    ]
    counts = [c for c in counts if c]
    return float(np.mean(counts)) if counts else math.nan


def accuracy_by_difficulty(
    graded: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Accuracy with a problem-clustered CI per (task, model, method, difficulty), for the
    rows whose task records a difficulty (an empty table when none does)."""
    _check_graded(graded, [*GROUP, "problem_id", "correct"])
    if "difficulty" not in graded.columns or graded["difficulty"].isna().all():
        return pd.DataFrame(columns=DIFFICULTY_COLUMNS)
    graded = graded[graded["difficulty"].notna()]
    out = []
    keys = [*GROUP, "difficulty"]
    for (task, model, method, difficulty), rows in graded.groupby(keys, sort=True):
        accuracy, low, high = bootstrap_ci(
            _correct(rows),
            rows["problem_id"].astype(str).to_numpy(),
            n_boot=n_boot,
            level=level,
            seed=derive_seed(seed, task, model, method, int(difficulty)),
        )
        compliant = rows["compliant"] if "compliant" in rows.columns else pd.Series(dtype=object)
        out.append(
            {
                "task": task,
                "model": model,
                "method": method,
                "difficulty": int(difficulty),
                "n_problems": rows["problem_id"].nunique(),
                "n_samples": len(rows),
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "compliance_rate": _mean(compliant.dropna().astype(float)),
                "mean_steps_correct": _mean(_column(rows, "steps_correct")),
                "mean_new_tokens": _mean(_column(rows, "n_new_tokens")),
            }
        )
    table = pd.DataFrame(out, columns=DIFFICULTY_COLUMNS)
    for name in ["difficulty", "n_problems", "n_samples"]:
        table[name] = table[name].astype("int64")
    return table


def pass_at_k_table(graded: pd.DataFrame) -> pd.DataFrame:
    """Unbiased pass@k per (task, model, method), k = 1..n, averaged over problems.

    ``n`` is the number of samples (seeds × chains) of a problem. When problems have
    different ``n`` (a failed shard), k runs up to the smallest, so every problem
    contributes to every k.
    """
    _check_graded(graded, [*GROUP, "problem_id", "correct"])
    frame = graded[[*GROUP, "problem_id"]].assign(correct=_correct(graded))
    per_problem = (
        frame.groupby([*GROUP, "problem_id"], sort=True, dropna=False)["correct"]
        .agg(n="size", c="sum")
        .reset_index()
    )
    out = []
    for (task, model, method), rows in per_problem.groupby(GROUP, sort=True, dropna=False):
        n = rows["n"].to_numpy()[:, None]  # (problems, 1)
        c = rows["c"].to_numpy().round().astype(int)[:, None]  # (problems, 1)
        ks = np.arange(1, int(n.min()) + 1)  # (K,)
        values = pass_at_k_array(n, c, ks[None, :]).mean(axis=0)  # (K,)
        out.extend(
            {"task": task, "model": model, "method": method, "k": int(k), "pass_at_k": float(v)}
            for k, v in zip(ks, values, strict=True)
        )
    table = pd.DataFrame(out, columns=PASS_AT_K_COLUMNS)
    table["k"] = table["k"].astype("int64")
    return table


def _trace_entries(trace) -> list[dict]:
    """The stage records of one row's ``sampler_trace`` as dicts.

    Accepts what the column holds in memory (a list of dicts) and what Parquet gives back
    (an array of lists of (key, value) pairs); null or empty gives no records.
    """
    if trace is None or (isinstance(trace, float) and math.isnan(trace)):
        return []
    return [dict(record) for record in trace]


def _trace_records(graded: pd.DataFrame) -> pd.DataFrame:
    """One row per (graded row, stage): the group keys, ``sampler``, ``row``, ``stage``
    (position in the trace) and the stage's fields as columns (NaN where a record lacks one).
    """
    if "sampler_trace" not in graded.columns:
        return pd.DataFrame()
    samplers = graded["sampler"] if "sampler" in graded.columns else [None] * len(graded)
    records = [
        {
            "task": task,
            "model": model,
            "method": method,
            "sampler": sampler,
            "row": row,
            "stage": stage,
            **fields,
        }
        for row, (task, model, method, sampler, trace) in enumerate(
            zip(
                graded["task"],
                graded["model"],
                graded["method"],
                samplers,
                graded["sampler_trace"],
                strict=True,
            )
        )
        for stage, fields in enumerate(_trace_entries(trace))
    ]
    return pd.DataFrame(records)


def sampler_trace_table(graded: pd.DataFrame) -> pd.DataFrame:
    """Every sampler's per-stage diagnostics, summarised: one row per (task, model, method,
    stage, field) with the field's mean and total over the rows that reached the stage.

    Sampler-agnostic: whatever keys a sampler records in its ``sampler_trace`` (documented
    in its ``TRACE_FIELDS``) appear here as ``field`` values; no trace gives an empty frame.
    """
    _check_graded(graded, GROUP)
    records = _trace_records(graded)
    if records.empty:
        return pd.DataFrame(columns=SAMPLER_TRACE_COLUMNS)
    keys = [*GROUP, "sampler", "stage"]
    long = records.drop(columns="row").melt(id_vars=keys, var_name="field").dropna(subset="value")
    table = (
        long.groupby([*keys, "field"], sort=True, dropna=False)["value"]
        .agg(n_rows="size", mean="mean", total="sum")
        .reset_index()
    )
    table["stage"] = table["stage"].astype("int64")
    table["n_rows"] = table["n_rows"].astype("int64")
    return table[SAMPLER_TRACE_COLUMNS]


def acceptance_by_block(graded: pd.DataFrame) -> pd.DataFrame:
    """MH acceptance rate and mean log p per block index, from the power-sampling traces.

    Reads the trace records that carry the block fields of power sampling (``block``,
    ``proposals``, ``accepted``, ``logp``). The acceptance rate pools all proposals of a
    block across rows (accepted / proposals, NaN for a block with no proposals);
    ``mean_logp`` is the mean log p of the chain's state at the end of the block. No such
    record gives an empty frame.
    """
    _check_graded(graded, GROUP)
    entries = _trace_records(graded)
    fields = ["block", "proposals", "accepted", "logp"]
    if entries.empty or not set(fields) <= set(entries.columns):
        return pd.DataFrame(columns=ACCEPTANCE_COLUMNS)
    entries = entries.dropna(subset=fields)
    if entries.empty:
        return pd.DataFrame(columns=ACCEPTANCE_COLUMNS)
    grouped = entries.groupby([*GROUP, "block"], sort=True, dropna=False)
    table = grouped.agg(
        proposals=("proposals", "sum"), accepted=("accepted", "sum"), mean_logp=("logp", "mean")
    ).reset_index()
    proposals = table["proposals"].astype(float)
    table["acceptance_rate"] = table["accepted"].astype(float) / proposals.where(proposals > 0)
    table["block"] = table["block"].astype("int64")
    return table[ACCEPTANCE_COLUMNS]
