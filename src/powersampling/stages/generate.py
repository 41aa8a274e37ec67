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
from powersampling.stages.shards import load_shard_model, shard_inputs


def generate(
    *,
    data_path,
    model_name: str,
    model: dict[str, Any],
    model_dir: str | None,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    method_name: str,
    method: dict[str, Any],
    seeds: Sequence[int],
    shard: int,
    rows: tuple[int, int],
    generation: dict[str, Any],
    device: str,
    threads: int,
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
    from powersampling.tasks.prompts import uses_chat_template

    task_obj, problems, shard_rows, prompt_ids, source, tokenizer = shard_inputs(
        model, model_dir, task_name, task, task_seed, data_path, rows, threads, shard=shard
    )
    chat_template = uses_chat_template(model.get("chat_template", False), task_name)
    instruct = bool(model.get("instruct", False))
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
        load_context_length(source, local_files_only=True),
        task_name=task_name,
        model_name=model_name,
    )
    n_cut = sum(b is not None and b < max_new_tokens for b in budgets)
    if n_cut:
        log(
            f"{n_cut} of {len(budgets)} prompts leave less than {max_new_tokens} new tokens "
            f"in {model_name}'s context: those rows get the budget that fits (token_budget)"
        )
    dtype = model.get("dtype", "auto")
    plan = plan_generation(
        source,
        plan_method,
        prompt_ids,
        generation.get("batch_size", 32),
        dtype=dtype,
        device=resolve_device(device),
        device_bytes=_gib_to_bytes(generation.get("device_memory_gib")),
        name=f"{model_name} / {method_name}",
        quantization=model.get("quantization"),
    )
    log(plan.describe())
    log(f"loading model {model_name} from {source}")
    began = time.perf_counter()
    lm, tokenizer = load_shard_model(model, source, device, tokenizer, log)
    log(f"model loaded on {lm.device} in {time.perf_counter() - began:.1f} s")
    if not seeds:
        raise UserError(f"no seeds to generate for {task_name} / {model_name} / {method_name}")
    frames = []
    for seed in seeds:
        log(f"seed {seed}")
        frames.append(
            generate_shard(
                lm,
                tokenizer,
                task_obj,
                problems,
                task_name=task_name,
                model_name=model_name,
                method_name=method_name,
                method=method,
                seed=int(seed),
                shard=shard,
                batch_size=plan.batch,
                chat_template=chat_template,
                instruct=instruct,
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
