"""The time plan as text: what ``python -m powersampling.plan`` prints."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from powersampling.plan.timing import JobTime, TimePlan

# GPU rules the plan does not time (the studies' model runs): each job asks for a fixed
# allowance, resources.generation_runtime_min.
UNTIMED_GPU_RULES = ("question_embeddings", "logit_lens_shard", "patching_shard")


def packed_wall_s(durations: Sequence[float], devices: int) -> float:
    """The wall time of jobs packed greedily on ``devices`` devices: longest first, each on
    the device that frees up first (LPT; within 4/3 of the best packing)."""
    loads = [0.0] * max(1, devices)
    for seconds in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + seconds)
    return max(loads)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _hours(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds / 3600:,.2f}"


def _header(plan: TimePlan, unit: str) -> list[str]:
    a, resources = plan.assumptions, plan.config["resources"]
    device = "calibrated where measured, else " if plan.measured else ""
    answers = (
        f"{a.answer_tokens:,} tokens (calibration.answer_tokens)"
        if a.answer_tokens
        else "each method's max_new_tokens (an upper bound)"
    )
    memory = "unlimited" if a.device_bytes is None else f"{a.device_bytes / 2**30:g} GiB"
    lines = [
        f"device: {device}{a.device.describe()}",
        f"answers: {answers}, unless measured; prompts: {a.prompt_tokens:,} tokens unless "
        f"measured; memory plan on {memory}",
        f"runtime: predicted x {resources['runtime_safety_factor']:g} "
        f"(resources.runtime_safety_factor), at least {resources['generation_runtime_min']} "
        f"min (generation_runtime_min), at most {resources['max_runtime_min']} min "
        f"(max_runtime_min); {unit} = hours x resources.gpu (at least 1)",
    ]
    for (model, method), cal in sorted(plan.measured.items()):
        lines.append(
            f"calibrated: {model} / {method} on {cal.device} ({cal.task}, {cal.rows} rows: "
            f"{cal.decode_tokens_per_s:,.0f} decode tokens/s, {cal.tokens_per_answer:,.0f} "
            f"tokens per answer; {cal.path})"
        )
    return lines


def _group_rows(plan: TimePlan, per_job: float, unit: str) -> list[tuple[str, ...]]:
    header = ("task", "model", "method", "jobs", "problems", "seeds", "tokens/answer", "from",
              "batch", "rows", "decode tok/s", f"{unit}/job", unit, "runtime min")  # fmt: skip
    groups: dict[tuple[str, str, str], list[JobTime]] = {}
    for job in plan.jobs:
        groups.setdefault((job.task, job.model, job.method), []).append(job)
    rows = [header]
    for (task, model, method), jobs in groups.items():
        cost, first = jobs[0].cost, max(jobs, key=lambda j: j.problems)
        known = cost is not None
        full = cost.rows(min(first.problems, cost.prompts_per_call())) if known else 0
        rows.append(
            (
                task,
                model,
                method,
                str(len(jobs)),
                str(sum(j.problems for j in jobs)),
                str(first.seeds),
                f"{cost.tokens_per_answer:,.0f}" if known else "?",
                cost.tokens_from if known else jobs[0].note.split(":")[0],
                str(cost.batch) if known else "-",
                str(full) if known else "-",
                f"{cost.decode_tokens_per_s(full):,.0f}" if known else "-",
                _hours(max(j.total_s for j in jobs) * per_job),
                _hours(sum(j.total_s for j in jobs) * per_job),
                str(max(plan.runtime_min(j) for j in jobs)),
            )
        )
    return rows


def format_plan(plan: TimePlan, gpus: int = 1, *, every_job: bool = False) -> str:
    """The plan per rule and per (task, model, method), totals and wall time on ``gpus``."""
    resources = plan.config["resources"]
    per_job = max(1, resources["gpu"])
    unit = "GPU-h" if resources["gpu"] else "job-h"
    lines = _header(plan, unit)
    lines += ["", f"rule generate: {len(plan.jobs)} jobs", _table(_group_rows(plan, per_job, unit))]
    total = sum(j.total_s for j in plan.jobs)
    wall = packed_wall_s([j.total_s for j in plan.jobs], gpus)
    lines.append(
        f"total: {_hours(total * per_job)} {unit}; wall time on {gpus} "
        f"{'GPU' if resources['gpu'] else 'job slot'}{'s' if gpus != 1 else ''}: "
        f"{_hours(wall)} h (jobs packed greedily, longest first)"
    )
    unplanned = [j for j in plan.jobs if j.cost is None]
    if unplanned:
        lines.append(
            f"{len(unplanned)} jobs have no plan ({unplanned[0].note.split(':')[0]}; their "
            "totals are unknown): each asks for resources.generation_runtime_min"
        )
    if every_job:
        lines += [""] + [
            f"{j.name}: {j.problems} problems x {j.seeds} seeds, {_hours(j.total_s)} h, "
            f"runtime {plan.runtime_min(j)} min"
            for j in plan.jobs
        ]
    calibration = list(plan.calibrations.values())
    lines += [
        "",
        f"rule calibrate: {len(calibration)} jobs (one call of a full shard's rows, one seed), "
        f"{_hours(sum(j.total_s for j in calibration) * per_job)} {unit} predicted, the "
        f"longest {_hours(max((j.total_s for j in calibration), default=0.0))} h",
        f"not timed: the GPU rules {', '.join(UNTIMED_GPU_RULES)} (where a study runs them) "
        f"ask for resources.generation_runtime_min = {resources['generation_runtime_min']} "
        "min per job",
    ]
    return "\n".join(lines)
