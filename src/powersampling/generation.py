"""Generate completions for one shard of a task with one model and one method.

:func:`generate_shard` is what a generation job runs: prompts → token ids → batched sampling
→ one row per problem in the layout of :data:`powersampling.io.GENERATION_SCHEMA`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from typing import Any

import pandas as pd
from tqdm import tqdm

from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.io import GENERATION_SCHEMA
from powersampling.models import eos_token_ids
from powersampling.samplers import get_sampler
from powersampling.seeding import derive_seed, torch_generator


def _emit(log, message: str) -> None:
    if log is None:
        return
    if hasattr(log, "info"):
        log.info(message)
    else:
        log(message)


def generate_shard(
    model,
    tokenizer,
    task,
    problems: pd.DataFrame,
    *,
    task_name: str,
    model_name: str,
    method_name: str,
    method: dict[str, Any],
    seed: int,
    shard: int,
    batch_size: int = 32,
    chat_template: bool = False,
    instruct: bool = False,
    kv_store: str = "device",
    dps=None,
    prompts_per_call: int | None = None,
    progress: bool = True,
    log=None,
) -> pd.DataFrame:
    """One completion per problem of the shard, as a frame with the generation schema's columns.

    Prompts are ``task.prompt(row, tokenizer, chat_template, instruct)``, tokenised as in
    :func:`shard_prompts`. Problems run in batches of ``batch_size`` prompts through one
    :class:`DecodingEngine` (at most ``batch_size`` rows per forward pass). Each row gets the
    budget of new tokens its prompt leaves in the model's context (:func:`row_budgets`).
    ``kv_store`` ("device" or "host") is where a sampler that keeps caches between
    proposals (power sampling) keeps them; the generation job takes it from its memory plan.

    Randomness: one ``torch.Generator`` on the model's device, seeded with
    ``derive_seed(seed, task_name, model_name, method_name, shard)``, feeds every batch in
    turn. The same arguments give the same completions on CPU; changing ``batch_size`` changes
    which draws each problem gets (the stream is shared by the batch). Power sampling draws
    from one stream per chain instead, seeded by :func:`chain_seed` from the run seed and the
    problem: a chain's answer depends on neither its shard nor its batch. SMC seeds the stream
    of each prompt's particles the same way.

    ``dps``: a :class:`~powersampling.dps.online.DpsSetup`, required by (and only for) a
    ``dps`` method: its controller and pool method. Its trajectory j of a problem, under run
    seed s, is the chain of run seed ``s · k_max + j`` of the pool method.
    ``prompts_per_call``: prompts per sampler call (default ``batch_size``); a dps call runs
    several chains per prompt at once, so its job gives fewer.

    Time: every row carries ``shard_decode_time_s``, the wall time spent in the sampler for
    the whole shard, so time per answer (shard time / answers) means the same for every
    sampler; a sampler that runs chains records each chain's ``chain_lifetime_s`` too.

    ``log`` is a ``logging.Logger`` or any callable taking a string (one line per batch).
    """
    if len(problems) == 0:
        raise UserError(f"shard {shard} of task {task_name} has no problems")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {batch_size})")
    sampler_name = method.get("sampler") if isinstance(method, dict) else None

    rows, prompts, prompt_ids = shard_prompts(task, problems, tokenizer, chat_template, instruct)

    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    engine = DecodingEngine(model, eos_token_ids=eos, pad_token_id=pad, max_batch_size=batch_size)
    sampler = get_sampler(method, engine)  # validates the method's parameters
    if hasattr(sampler, "kv_store"):  # samplers that keep caches between proposals
        sampler.kv_store = kv_store
    max_new_tokens = sampler.params.get("max_new_tokens")
    if sampler.name == "dps":
        if dps is None:
            raise UserError(f"method {method_name} (dps) needs its controller (studies.dps)")
        sampler.prepare(
            replace(
                dps,
                grade=task.grade_many,
                decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            )
        )
        from powersampling.samplers import method_params

        max_new_tokens = method_params(dps.power)["max_new_tokens"]  # its trajectories'

    budgets = row_budgets(
        rows,
        prompt_ids,
        max_new_tokens,
        engine.max_positions,
        task_name=task_name,
        model_name=model_name,
    )

    generator = torch_generator(
        derive_seed(seed, task_name, model_name, method_name, shard), device=engine.device
    )
    records: list[dict] = []
    decode_time_s = 0.0  # the shard's, over all batches: rows of a batch share their time
    desc = f"{task_name}/{model_name}/{method_name} shard {shard}"
    with tqdm(total=len(rows), desc=desc, file=sys.stderr, disable=not progress) as bar:
        per_call = prompts_per_call or batch_size
        for start in range(0, len(rows), per_call):
            batch = prompt_ids[start : start + per_call]
            t0 = time.perf_counter()
            batch_budgets = budgets[start : start + per_call]
            streams = _row_streams(
                sampler,
                rows[start : start + per_call],
                seed=seed,
                names=(task_name, model_name, method_name),
                dps=dps,
            )
            if None in batch_budgets:  # a sampler without a token budget
                results = sampler.sample(batch, generator, **streams)
            else:
                results = sampler.sample(batch, generator, budgets=batch_budgets, **streams)
            elapsed = time.perf_counter() - t0
            decode_time_s += elapsed
            records.extend(results)
            bar.update(len(batch))
            done = start + len(batch)
            _emit(
                log, f"{desc}: {done}/{len(rows)} problems, batch of {len(batch)} in {elapsed:.2f}s"
            )

    frame = pd.DataFrame.from_records(records)
    frame.insert(0, "task", task_name)
    frame["problem_id"] = [str(row["problem_id"]) for row in rows]
    frame["model"] = model_name
    frame["method"] = method_name
    frame["sampler"] = sampler_name
    frame["sampling"] = sampling_record(sampler, dps)
    frame["seed"] = seed
    frame["shard"] = shard
    if "chain" not in frame:  # dps names the trajectory that won its vote
        frame["chain"] = 0
    frame["prompt"] = prompts
    frame["completion"] = [
        tokenizer.decode(ids, skip_special_tokens=True) for ids in frame["completion_ids"]
    ]
    frame["n_prompt_tokens"] = [len(ids) for ids in prompt_ids]
    frame["token_budget"] = budgets
    frame["shard_decode_time_s"] = decode_time_s
    if "chain_lifetime_s" not in frame:  # only samplers that run chains record it
        frame["chain_lifetime_s"] = float("nan")
    return _with_schema_dtypes(frame)


def sampling_record(sampler, dps=None) -> str:
    """The effective sampling settings of a shard, as JSON (the ``sampling`` column)."""
    record = {"sampler": sampler.name, **sampler.params, "generation_config": "ignored"}
    if dps is not None and sampler.name == "dps":
        from powersampling.samplers import method_params

        record["pool"] = {"sampler": dps.power["sampler"], **method_params(dps.power)}
    return json.dumps(record, sort_keys=True)


def chain_seed(seed: int, task_name: str, model_name: str, method_name: str, problem_id) -> int:
    """The seed of a problem's chain under a run seed: the same in any shard or batch."""
    return derive_seed(seed, task_name, model_name, method_name, "problem", str(problem_id))


def _row_streams(sampler, rows: list[dict], *, seed: int, names: tuple[str, str, str], dps):
    """Per-row seeds for the samplers that draw one stream per chain or per prompt's
    particles (power, smc, dps)."""
    task_name, model_name, method_name = names
    ids = [row["problem_id"] for row in rows]
    if sampler.name in ("power", "smc"):
        return {"chain_seeds": [chain_seed(seed, *names, pid) for pid in ids]}
    if sampler.name == "dps":
        k_max = dps.schedule.k_max
        return {
            "problems": rows,
            "trajectory_seeds": [
                [
                    chain_seed(seed * k_max + j, task_name, model_name, dps.pool_name, pid)
                    for j in range(k_max)
                ]
                for pid in ids
            ],
        }
    return {}


def shard_prompts(
    task, problems: pd.DataFrame, tokenizer, chat_template: bool = False, instruct: bool = False
) -> tuple[list[dict], list[str], list[list[int]]]:
    """The shard's rows, their prompts, and the prompts' token ids.

    A raw prompt is tokenised as the model's tokenizer does by default (with the special
    tokens it adds, e.g. a BOS token), which is also how published runs that call
    ``tokenizer.encode`` fed it; a chat-templated prompt already contains its own.
    """
    rows = problems.to_dict("records")
    prompts = [task.prompt(row, tokenizer, chat_template, instruct) for row in rows]
    encoded = tokenizer(prompts, add_special_tokens=not chat_template)["input_ids"]
    return rows, prompts, [list(ids) for ids in encoded]


def row_budgets(
    rows: list[dict],
    prompt_ids: list[list[int]],
    max_new_tokens: int | None,
    context: int | None,
    *,
    task_name: str,
    model_name: str,
) -> list[int | None]:
    """Each row's budget of new tokens: ``min(max_new_tokens, context - prompt length)``.

    A long prompt gets the room its context leaves instead of failing the whole shard (the
    row records its ``token_budget``; the accuracy table counts such rows). A prompt that is
    empty or leaves no room for one new token is a UserError naming the first such problem.
    ``context`` None (unknown) cuts nothing; a sampler without ``max_new_tokens`` gets None.
    """
    budgets = []
    for row, ids in zip(rows, prompt_ids, strict=True):
        if not ids:
            raise UserError(f"problem {row['problem_id']} of task {task_name}: the prompt is empty")
        if max_new_tokens is None:  # a sampler without a token budget
            budgets.append(None)
            continue
        room = max_new_tokens if context is None else min(max_new_tokens, context - len(ids))
        if room < 1:
            raise UserError(
                f"problem {row['problem_id']} of task {task_name}: the prompt of {len(ids)} "
                f"tokens leaves no room for a new token in {model_name}'s context of "
                f"{context} tokens"
            )
        budgets.append(room)
    return budgets


def _with_schema_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Exactly the schema's columns, in order, with pandas dtypes matching its Arrow types."""
    frame = frame[GENERATION_SCHEMA.names].copy()
    for name in ["seed", "tokens_decoded", "tokens_prefilled"]:
        frame[name] = frame[name].astype("int64")
    for name in ["shard", "chain", "n_prompt_tokens", "n_new_tokens"]:
        frame[name] = frame[name].astype("int32")
    for name in [
        "logp_sum",
        "mean_entropy",
        "perplexity",
        "self_confidence",
        "mean_token_prob",
        "min_token_logp",
        "sampled_logq_sum",
        "temperature",
    ]:
        frame[name] = frame[name].astype("float64")
    for name in ["shard_decode_time_s", "chain_lifetime_s"]:
        frame[name] = frame[name].astype("float64")
    # Power-sampling columns: nullable for samplers that leave them empty.
    frame["token_budget"] = pd.array(frame["token_budget"], dtype="Int32")
    frame["acceptance_rate"] = pd.array(frame["acceptance_rate"], dtype="Float64")
    frame["proposals"] = pd.array(frame["proposals"], dtype="Int32")
    return frame
