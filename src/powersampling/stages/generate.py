"""Stage of ``rules/generate.smk``: one generation shard, every seed of it on one model load."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log
from powersampling.stages.shards import ShardJob


def generate(
    job: ShardJob,
    *,
    method_name: str,
    method: dict[str, Any],
    seeds: Sequence[int],
    generation: dict[str, Any],
    out_path,
    dps: dict[str, Any] | None = None,
    log: Log = no_log,
) -> pd.DataFrame:
    """Generate one shard for every seed in ``seeds``: load the model once, decode all its
    problems in batches, one seed after the other (each with its own random stream, as
    :func:`~powersampling.generation.generate_shard` seeds it).

    A ``dps`` method also gets ``dps``: ``{controller: path, embeddings: path or None,
    pool: name, pool_method: {...}, schedule: {k_start, k_step, k_max}}``. It answers only
    the questions its controller did not learn from (the held-out questions); a shard
    without any is written empty.

    Before the weights are loaded, from the tokenizer and the model's config alone: every
    prompt is checked to leave room for at least one new token in the model's context (rows
    whose prompt leaves less than the method's budget get what fits; their number is
    logged), and a memory plan (:mod:`powersampling.memory`) picks the largest batch that
    fits the device, or refuses with the numbers. The plan is printed to the job's log.
    """

    from powersampling.generation import generate_shard, row_budgets
    from powersampling.memory import plan_generation
    from powersampling.models import (
        load_context_length,
        resolve_device,
    )
    from powersampling.samplers import method_params

    inputs = job.read_inputs()
    problems, shard_rows, prompt_ids = inputs.problems, inputs.rows, inputs.prompt_ids
    setup, plan_method = None, method
    if method["sampler"] == "dps":
        setup, learnt = _dps_setup(dps, log)
        keep = [i for i, row in enumerate(shard_rows) if str(row["problem_id"]) not in learnt]
        log(f"dps: {len(keep)} of {len(shard_rows)} problems are held out from its controller")
        if not keep:
            frame = pd.DataFrame(columns=io.GENERATION_SCHEMA.names)
            io.write_parquet(frame, out_path, io.GENERATION_SCHEMA)
            return frame
        problems = problems.iloc[keep].reset_index(drop=True)
        shard_rows = [shard_rows[i] for i in keep]
        prompt_ids = [prompt_ids[i] for i in keep]
        plan_method = dps["pool_method"]
    max_new_tokens = method_params(plan_method).get("max_new_tokens")
    budgets = row_budgets(
        shard_rows,
        prompt_ids,
        max_new_tokens,
        load_context_length(job.source, local_files_only=True),
        task_name=job.task_name,
        model_name=job.model_name,
    )
    n_cut = sum(b is not None and b < max_new_tokens for b in budgets)
    if n_cut:
        log(
            f"{n_cut} of {len(budgets)} prompts leave less than {max_new_tokens} new tokens "
            f"in {job.model_name}'s context: those rows get the budget that fits (token_budget)"
        )
    dtype = job.model.get("dtype", "auto")
    plan = plan_generation(
        job.source,
        plan_method,
        prompt_ids,
        generation.get("batch_size", 32),
        dtype=dtype,
        device=resolve_device(job.device),
        device_bytes=_gib_to_bytes(generation.get("device_memory_gib")),
        name=f"{job.model_name} / {method_name}",
        quantization=job.model.get("quantization"),
    )
    log(plan.describe())
    log(f"loading model {job.model_name} from {job.source}")
    began = time.perf_counter()
    lm, tokenizer = job.load_model(inputs.tokenizer, log)
    log(f"model loaded on {lm.device} in {time.perf_counter() - began:.1f} s")
    if not seeds:
        raise UserError(
            f"no seeds to generate for {job.task_name} / {job.model_name} / {method_name}"
        )
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
                dps=setup,
                # A dps call runs up to k_start chains per prompt: as many chains as the plan's
                # batch, the number of rows a power-sampling call runs.
                prompts_per_call=(
                    max(1, plan.batch // setup.schedule.k_start) if setup is not None else None
                ),
                progress=generation.get("progress", True),
                log=log,
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    io.write_parquet(frame, out_path, io.GENERATION_SCHEMA)
    log(f"wrote {len(frame)} rows ({len(seeds)} seeds) to {out_path}")
    return frame


def _gib_to_bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * 2**30)


def _dps_setup(dps: dict[str, Any] | None, log: Log):
    """The DpsSetup of a dps generation job and the questions its controller learnt from."""
    from powersampling.dps.controllers import Controller
    from powersampling.dps.online import DpsSetup
    from powersampling.dps.policy import Schedule

    if not dps:
        raise UserError("a dps method needs its controller and pool (studies.dps)")
    controller = Controller.load(dps["controller"])
    embeddings = None
    if dps.get("embeddings"):
        table = pd.read_parquet(dps["embeddings"])
        embeddings = {
            str(p): np.asarray(e, dtype=float)
            for p, e in zip(table["problem_id"], table["embedding"], strict=True)
        }
    log(f"dps: controller {controller.name} ({dps['controller']}), pool method {dps['pool']}")
    setup = DpsSetup(
        pool_name=dps["pool"],
        power=dps["pool_method"],
        schedule=Schedule(**dps["schedule"]),
        controller=controller,
        embeddings=embeddings,
    )
    return setup, set(controller.info["train_questions"])
