"""Stage of ``rules/generate.smk``: one generation shard, every seed of it on one model load."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.checkpoints import (
    ShardCheckpoint,
    digest,
    file_digests,
    model_fingerprint,
    stop_on_sigterm,
)
from powersampling.errors import UserError
from powersampling.generation import ShardPrompts
from powersampling.stages.common import Log, no_log
from powersampling.stages.shards import ShardInputs, ShardJob


def generate(
    job: ShardJob,
    *,
    method_name: str,
    method: dict[str, Any],
    seeds: Sequence[int],
    generation: dict[str, Any],
    out_path,
    sampler_files: dict[str, str] | None = None,
    sampler_settings: dict[str, Any] | None = None,
    log: Log = no_log,
) -> pd.DataFrame:
    """Generate one shard for every seed in ``seeds``: load the model once, decode all its
    problems in batches, one seed after the other (each with its own random stream, as
    :func:`~powersampling.generation.generate_shard` seeds it).

    ``sampler_files`` and ``sampler_settings`` are what the method's sampler asked the rule
    for (its ``job_files`` and ``job_settings``: a controller, a pool method); its
    ``load_setup`` reads them, and its ``rows_to_answer`` may leave problems out (a dps
    method answers only the questions its controller did not learn from). A shard left
    without problems is written empty.

    Before the weights are loaded, from the tokenizer and the model's config alone: every
    prompt is checked to leave room for at least one new token in the model's context (rows
    whose prompt leaves less than the method's budget get what fits; their number is
    logged), and a memory plan (:mod:`powersampling.memory`) picks the largest batch that
    fits the device, or refuses with the numbers. The plan is printed to the job's log.
    Prompts are tokenised and budgets computed once, for every seed.

    Crash-safe: every finished call of every seed is saved to a checkpoint beside
    ``out_path`` (:mod:`powersampling.checkpoints`), keyed by everything that determines the
    rows (:func:`_checkpoint_inputs`). A rerun after a kill reads those calls back and
    decodes the rest, giving the rows an uninterrupted run gives (wall times aside); a
    checkpoint made from other inputs is discarded. The checkpoint is removed once the
    Parquet is written. While the job runs, SIGTERM makes it finish the call under way, save
    it, and stop before the next with :class:`~powersampling.checkpoints.GenerationStopped`
    (the process exits non-zero); the old handler is restored on return.
    """
    from powersampling.generation import generate_shard
    from powersampling.samplers import sampler_class

    if not seeds:
        raise UserError(
            f"no seeds to generate for {job.task_name} / {job.model_name} / {method_name}"
        )
    sampler = sampler_class(method["sampler"])
    setup = sampler.load_setup(sampler_files or {}, sampler_settings, log)
    inputs = job.read_inputs()
    keep = sampler.rows_to_answer(setup, [str(row["problem_id"]) for row in inputs.rows])
    if len(keep) < len(inputs.rows):
        log(f"{method_name}: its sampler answers {len(keep)} of {len(inputs.rows)} problems")
    if not keep:
        frame = pd.DataFrame(columns=io.GENERATION_SCHEMA.names)
        io.write_parquet(frame, out_path, io.GENERATION_SCHEMA)
        return frame
    problems = inputs.problems.iloc[keep].reset_index(drop=True)
    prompts = ShardPrompts(inputs.rows, inputs.prompts, inputs.prompt_ids).subset(keep)
    decoded = sampler.decoded_method(method, sampler_settings)
    budgets = job.row_budgets(prompts, decoded, log)
    plan = job.memory_plan(decoded, prompts.ids, generation, f"{job.model_name} / {method_name}")
    log(plan.describe())
    inputs_of_rows = _checkpoint_inputs(
        job, method_name, method, seeds, problems, prompts, budgets, plan.batch,
        sampler_files=sampler_files or {}, sampler_settings=sampler_settings,
    )  # fmt: skip
    with stop_on_sigterm(log) as stop:
        checkpoint = ShardCheckpoint.open(out_path, inputs_of_rows, log, stop)
        lm, tokenizer = _load(job, inputs, log)
        frames = []
        for seed in seeds:
            log(f"seed {seed}")
            frames.append(
                generate_shard(
                    lm,
                    tokenizer,
                    inputs.task,
                    problems,
                    task_name=job.task_name,
                    model_name=job.model_name,
                    method_name=method_name,
                    method=method,
                    seed=int(seed),
                    shard=job.shard,
                    batch_size=plan.batch,
                    chat_template=job.chat_template,
                    instruct=job.instruct,
                    kv_store=plan.chain_store or "device",
                    setup=setup,
                    prompts=prompts,
                    budgets=budgets,
                    progress=generation.get("progress", True),
                    log=log,
                    checkpoint=checkpoint,
                )
            )
        frame = pd.concat(frames, ignore_index=True)
        io.write_parquet(frame, out_path, io.GENERATION_SCHEMA)
        log(f"wrote {len(frame)} rows ({len(seeds)} seeds) to {out_path}")
        checkpoint.remove()
    return frame


def _checkpoint_inputs(
    job: ShardJob,
    method_name: str,
    method: dict[str, Any],
    seeds: Sequence[int],
    problems: pd.DataFrame,
    prompts: ShardPrompts,
    budgets: list[int | None],
    batch: int,
    *,
    sampler_files: dict[str, str],
    sampler_settings: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything that determines a generation job's rows, as the key of its checkpoint.

    Large parts (the problems, the prompts' token ids) enter as digests; the model folder as
    its config and its files' sizes and times (reading the weights would take minutes); the
    sampler's extra files (a controller) by content. Where caches live (``kv_store``) is
    left out: it changes where memory is used, never a row.
    """
    import torch

    from powersampling.models import resolve_device

    return {
        "task": [job.task_name, job.task, job.task_seed],
        "shard": [job.shard, list(job.rows)],
        "problem_ids": [str(row["problem_id"]) for row in prompts.rows],
        "problems": digest(problems.to_dict("records")),
        "model": [job.model_name, job.model, model_fingerprint(job.source)],
        "method": [method_name, method, sampler_settings, file_digests(sampler_files)],
        "seeds": [int(seed) for seed in seeds],
        "prompt_ids": digest(prompts.ids),
        "budgets": budgets,
        "batch": batch,  # with the method, it fixes the calls (prompts_per_call)
        "device": resolve_device(job.device).type,
        "torch": torch.__version__,
        "row_format": digest(str(io.GENERATION_SCHEMA)),
    }


def _load(job: ShardJob, inputs: ShardInputs, log: Log):
    log(f"loading model {job.model_name} from {job.source}")
    began = time.perf_counter()
    lm, tokenizer = job.load_model(inputs.tokenizer, log)
    log(f"model loaded on {lm.device} in {time.perf_counter() - began:.1f} s")
    return lm, tokenizer
