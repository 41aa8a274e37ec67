"""The plan against what the jobs spent: predicted and actual decode time and tokens.

Actual time is the rows' ``shard_decode_time_s`` (the time a shard's seed spent in the
sampler, on every row of it), counted once per shard and seed as the accuracy table counts
it; actual tokens are the rows' ``tokens_decoded``. The prediction is the plan's time in the
sampler (prefill and decode, every seed; the model load aside) and its tokens per answer.
A method whose sampler answers fewer problems than its shard holds (dps) is predicted for
every problem, and at its bound on trajectories: its prediction is an upper bound.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from powersampling.plan.timing import TimePlan

GROUP = ["task", "model", "method"]
JOB_COLUMNS = [
    *GROUP,
    "shard",
    "answers",
    "calibrated",
    "predicted_tokens_per_answer",
    "tokens_per_answer",
    "predicted_decode_s",
    "decode_s",
    "decode_error",  # predicted / actual - 1
]
COST_COLUMNS = [
    *GROUP,
    "jobs",
    "answers",
    "calibrated",
    "tokens_from",  # "model" (the sampler's cost model) or "measured" (a calibration)
    "predicted_tokens_per_answer",
    "tokens_per_answer",
    "tokens_error",
    "predicted_decode_s",
    "decode_s",
    "decode_error",
    "predicted_time_per_answer_s",
    "time_per_answer_s",
    "median_job_error",  # of |decode_error| over the group's jobs
    "worst_job_error",  # the job error of largest magnitude
]


def _actual_decode_s(rows: pd.DataFrame) -> float:
    """Decode time of a job's rows: each seed's shard time counted once."""
    per_seed = pd.to_numeric(rows.groupby("seed")["shard_decode_time_s"].first(), errors="coerce")
    return float(per_seed.sum())


def job_comparison(plan: TimePlan, generations: pd.DataFrame) -> pd.DataFrame:
    """One row per generation job with rows in ``generations``: predicted against actual."""
    out = []
    for (task, model, method, shard), rows in generations.groupby([*GROUP, "shard"], sort=True):
        job = plan.job(task, model, method, int(shard))
        actual = _actual_decode_s(rows)
        predicted = job.sampler_s
        out.append(
            {
                "task": task,
                "model": model,
                "method": method,
                "shard": int(shard),
                "answers": len(rows),
                "calibrated": job.cost is not None and job.cost.calibration is not None,
                "predicted_tokens_per_answer": (
                    math.nan if job.cost is None else job.cost.tokens_per_answer
                ),
                "tokens_per_answer": float(rows["tokens_decoded"].mean()),
                "predicted_decode_s": predicted,
                "decode_s": actual,
                "decode_error": predicted / actual - 1 if actual > 0 else math.nan,
            }
        )
    return pd.DataFrame(out, columns=JOB_COLUMNS)


def cost_table(plan: TimePlan, generations: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, model, method): predicted against actual tokens and decode time,
    summed over its jobs, and the spread of its jobs' errors."""
    jobs = job_comparison(plan, generations)
    out = []
    for (task, model, method), group in jobs.groupby(GROUP, sort=True):
        cost = plan.job(task, model, method, int(group["shard"].iloc[0])).cost
        answers = int(group["answers"].sum())
        predicted_s, actual_s = group["predicted_decode_s"].sum(), group["decode_s"].sum()
        predicted_tokens = cost.tokens_per_answer if cost is not None else math.nan
        actual_tokens = float((group["tokens_per_answer"] * group["answers"]).sum() / answers)
        errors = group["decode_error"].dropna().to_numpy()
        predicted_answers = sum(
            j.problems * j.seeds
            for j in plan.jobs
            if (j.task, j.model, j.method) == (task, model, method)
        )
        out.append(
            {
                "task": task,
                "model": model,
                "method": method,
                "jobs": len(group),
                "answers": answers,
                "calibrated": bool(group["calibrated"].all()),
                "tokens_from": cost.tokens_from if cost is not None else "unknown",
                "predicted_tokens_per_answer": predicted_tokens,
                "tokens_per_answer": actual_tokens,
                "tokens_error": predicted_tokens / actual_tokens - 1,
                "predicted_decode_s": predicted_s,
                "decode_s": actual_s,
                "decode_error": predicted_s / actual_s - 1 if actual_s > 0 else math.nan,
                "predicted_time_per_answer_s": predicted_s / predicted_answers,
                "time_per_answer_s": actual_s / answers,
                "median_job_error": float(np.median(np.abs(errors))) if len(errors) else math.nan,
                "worst_job_error": float(errors[np.argmax(np.abs(errors))])
                if len(errors)
                else math.nan,
            }
        )
    return pd.DataFrame(out, columns=COST_COLUMNS)


def error_summary(jobs: pd.DataFrame) -> dict[str, float]:
    """Median absolute relative error of the jobs' predicted decode time, and the worst."""
    errors = jobs["decode_error"].dropna().to_numpy()
    worst = errors[np.argmax(np.abs(errors))]
    return {
        "jobs": len(errors),
        "median_abs_error": float(np.median(np.abs(errors))),
        "worst_error": float(worst),
        "worst_job": "/".join(
            str(v) for v in jobs.loc[jobs["decode_error"] == worst, [*GROUP, "shard"]].iloc[0]
        ),
    }
