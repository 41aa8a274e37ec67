"""Stages of ``rules/calibration.smk``: a (model, method)'s speeds on the generation jobs'
device, measured on a short slice of a real shard, and the table of every calibration.

What is measured, and why so (the time plan, :mod:`powersampling.plan`, reads it): the
model's load time; a prefill's tokens per second (one forward pass over the call's prompts,
timed the second time, after a warm-up); the call through the same
:func:`~powersampling.generation.generate_shard`, memory plan and batch as a generation job
(repeated with the same seed until ``calibration.min_timed_s`` were timed, at most :data:`MAX_CALLS`
times, its median time taken), whose time less that prefill gives the decode tokens per
second at the call's rows; tokens
decoded per answer; and the peak memory (CUDA's allocator peak, or the process's peak RSS on
a CPU). The slice is the first problems of the task's first shard, each repeated with its own
random stream (problem id ``<id>#<copy>``) until the call holds as many prompts as a job of a
full shard decodes at once, so the speeds are those of a real job's rows in flight. The seed
is none of the experiments' (:func:`~powersampling.plan.calibration_seed`): no generation
output is touched or repeated.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.generation import ShardPrompts
from powersampling.stages.common import Log, no_log
from powersampling.stages.shards import ShardJob


def calibrate(
    job: ShardJob,
    *,
    method_name: str,
    method: dict[str, Any],
    seed: int,
    shard_problems: int,
    generation: dict[str, Any],
    out_path,
    min_timed_s: float = 5.0,
    sampler_files: dict[str, str] | None = None,
    sampler_settings: dict[str, Any] | None = None,
    log: Log = no_log,
) -> pd.DataFrame:
    """Calibrate ``method`` on ``job``'s model over the job's rows (the slice) and write one
    row of :data:`~powersampling.plan.CALIBRATION_COLUMNS` to ``out_path``. ``shard_problems``:
    problems of the shard the slice is from (a full job's call is at most that many)."""
    import torch

    from powersampling.generation import generate_shard
    from powersampling.models import resolve_device
    from powersampling.samplers import method_params, sampler_class

    sampler = sampler_class(method["sampler"])
    setup = sampler.load_setup(sampler_files or {}, sampler_settings, log)
    inputs = job.read_inputs()
    keep = sampler.rows_to_answer(setup, [str(row["problem_id"]) for row in inputs.rows])
    if not keep:
        raise UserError(f"{method_name}: its sampler answers none of the calibration's problems")
    decoded = sampler.decoded_method(method, sampler_settings)
    rows_per_prompt = sampler_class(decoded["sampler"]).rows_per_prompt(method_params(decoded))
    slice_prompts = ShardPrompts(inputs.rows, inputs.prompts, inputs.prompt_ids).subset(keep)
    plan = job.memory_plan(
        decoded, slice_prompts.ids, generation, f"{job.model_name} / {method_name} (calibration)"
    )
    log(plan.describe())
    n_prompts = min(max(1, plan.batch // rows_per_prompt), shard_problems)
    problems, prompts = repeated(inputs.problems.iloc[keep], slice_prompts, n_prompts)
    log(f"calibration: {len(keep)} problems repeated to {n_prompts} prompts, seed {seed}")
    budgets = job.row_budgets(prompts, decoded)
    device = resolve_device(job.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    lm, tokenizer = job.load_model(inputs.tokenizer, log)
    load_s = time.perf_counter() - began
    log(f"model loaded on {lm.device} in {load_s:.1f} s")
    prefill_s = time_prefill(lm, prompts.ids, tokenizer.pad_token_id or 0)

    def call():
        return generate_shard(
            lm, tokenizer, inputs.task, problems,
            task_name=job.task_name, model_name=job.model_name, method_name=method_name,
            method=method, seed=seed, shard=0, batch_size=plan.batch,
            chat_template=job.chat_template, instruct=job.instruct,
            kv_store=plan.chain_store or "device", setup=setup, prompts=prompts,
            budgets=budgets, progress=False, log=log,
        )  # fmt: skip

    frame, times = timed_calls(call, min_timed_s)
    row = calibration_row(
        frame, prompts, load_s=load_s, prefill_s=prefill_s, device=device, threads=job.threads
    )
    row.update(calls=len(times), sampler_s=statistics.median(times))
    row.update(decode_timing(row))
    row.update(
        model=job.model_name, method=method_name, task=job.task_name, sampler=method["sampler"],
        batch=plan.batch, requested_batch=plan.requested_batch,
        rows=min(plan.batch, n_prompts * rows_per_prompt), problems=len(keep),
        rows_per_prompt=rows_per_prompt, seed=seed,
        max_new_tokens=method_params(decoded).get("max_new_tokens"),
    )  # fmt: skip
    from powersampling.plan import CALIBRATION_COLUMNS

    table = pd.DataFrame([row], columns=CALIBRATION_COLUMNS)
    io.write_parquet(table, out_path)
    log(
        f"calibration of {job.model_name} / {method_name} on {row['device']}: "
        f"{row['decode_tokens_per_s']:,.0f} decode tokens/s at {row['rows']} rows, "
        f"{row['tokens_per_answer']:,.1f} tokens per answer, prefill "
        f"{row['prefill_tokens_per_s']:,.0f} tokens/s, load {load_s:.1f} s"
    )
    return table


# A call is repeated (same seed: the same tokens) until ``min_timed_s`` (config
# calibration.min_timed_s) were timed, at most MAX_CALLS times, and its median time taken:
# one short call on a busy machine is noise. On a GPU a call of a real shard is longer: it
# runs once.
MAX_CALLS = 5


def timed_calls(call, min_timed_s: float = 5.0) -> tuple[pd.DataFrame, list[float]]:
    """``call()``'s rows (the last call's) and every call's time in the sampler."""
    times: list[float] = []
    while not times or (sum(times) < min_timed_s and len(times) < MAX_CALLS):
        frame = call()
        times.append(float(frame["shard_decode_time_s"].iloc[0]))
    return frame, times


def repeated(
    problems: pd.DataFrame, prompts: ShardPrompts, n: int
) -> tuple[pd.DataFrame, ShardPrompts]:
    """The slice's problems and prompts cycled to ``n``; every copy after the first gets the
    problem id ``<id>#<copy>``, so samplers that seed rows by problem draw it anew."""
    rows, frames = [], []
    for i in range(n):
        j, copy = i % len(prompts.rows), i // len(prompts.rows)
        row = dict(prompts.rows[j])
        if copy:
            row["problem_id"] = f"{row['problem_id']}#{copy}"
        rows.append(row)
        frames.append({**problems.iloc[j].to_dict(), "problem_id": row["problem_id"]})
    texts = [prompts.texts[i % len(prompts.rows)] for i in range(n)]
    ids = [prompts.ids[i % len(prompts.rows)] for i in range(n)]
    return pd.DataFrame(frames), ShardPrompts(rows, texts, ids)


def time_prefill(lm, prompt_ids: Sequence[Sequence[int]], pad_id: int) -> float:
    """Seconds of one forward pass over the prompts (right-padded), timed the second time:
    the first warms kernels and allocator up. Only the last position's logits are made."""
    import torch

    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, : len(ids)] = torch.tensor(list(ids))
        mask[i, : len(ids)] = 1
    input_ids, mask = input_ids.to(lm.device), mask.to(lm.device)
    elapsed = 0.0
    with torch.inference_mode():
        for _ in range(2):
            _synchronize(lm.device)
            began = time.perf_counter()
            try:
                lm(input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            except TypeError:  # a model class without logits_to_keep
                lm(input_ids=input_ids, attention_mask=mask, use_cache=False)
            _synchronize(lm.device)
            elapsed = time.perf_counter() - began
    return elapsed


def calibration_row(frame, prompts: ShardPrompts, *, load_s, prefill_s, device, threads) -> dict:
    """The measured columns of a calibration from one call's rows ``frame``."""
    prefill_tokens = sum(len(ids) for ids in prompts.ids)
    tokens = int(frame["tokens_decoded"].sum())
    peak, peak_of = peak_memory(device)
    row = {
        "device": device_name(device),
        "device_type": device.type,
        "threads": int(threads),
        "prompts": len(prompts.ids),
        "mean_prompt_tokens": prefill_tokens / len(prompts.ids),
        "load_s": float(load_s),
        "prefill_tokens": prefill_tokens,
        "prefill_s": float(prefill_s),
        "prefill_tokens_per_s": prefill_tokens / prefill_s if prefill_s > 0 else float("inf"),
        "calls": 1,
        "sampler_s": float(frame["shard_decode_time_s"].iloc[0]),
        "tokens_decoded": tokens,
        "tokens_per_answer": tokens / len(frame),
        "new_tokens_per_answer": float(frame["n_new_tokens"].mean()),
        "peak_memory_bytes": int(peak),
        "peak_memory_of": peak_of,
    }
    return {**row, **decode_timing(row)}


def decode_timing(row: dict) -> dict:
    """The decode time and speed of a call: its time in the sampler less the prefill of
    its prompts at the measured prefill speed (at least 1% of it, so a noisy prefill timing
    cannot make the decode speed absurd)."""
    prefill = row["prefill_tokens"] / row["prefill_tokens_per_s"]
    decode_s = max(row["sampler_s"] - prefill, 0.01 * row["sampler_s"])
    return {"decode_s": decode_s, "decode_tokens_per_s": row["tokens_decoded"] / decode_s}


def peak_memory(device) -> tuple[int, str]:
    """The job's peak memory in bytes and what was read: CUDA's allocator peak on a GPU,
    the process's peak resident set on a CPU (Linux reports it in KiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS (getrusage)"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def collect_calibration(paths: Sequence[str], out_path, log: Log = no_log) -> pd.DataFrame:
    """Every calibration file's row in one table (Parquet + CSV)."""
    table = io.read_parquet(list(paths))
    io.write_table(table, out_path)
    log(f"{len(table)} calibrations in {out_path}")
    return table
