"""Generate completions for one shard of a task with one model and one method.

:func:`generate_shard` is what a generation job runs: prompts → token ids → batched sampling
→ one row per problem in the layout of :data:`powersampling.io.GENERATION_SCHEMA`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NamedTuple

import pandas as pd
from tqdm import tqdm

from powersampling.checkpoints import Piece, ShardCheckpoint, generator_state, restore_generator
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
    setup: Any = None,
    prompts: ShardPrompts | None = None,
    budgets: list[int | None] | None = None,
    progress: bool = True,
    log=None,
    checkpoint: ShardCheckpoint | None = None,
) -> pd.DataFrame:
    """One completion per problem of the shard, as a frame with the generation schema's columns.

    Prompts are ``task.prompt(row, tokenizer, chat_template, instruct)``, tokenised as in
    :func:`shard_prompts` (or given, already tokenised, as ``prompts``). Problems run in
    calls of the sampler's :meth:`~powersampling.samplers.Sampler.prompts_per_call` for
    ``batch_size`` rows, through one :class:`DecodingEngine` (at most ``batch_size`` rows
    per forward pass). Each row gets the budget of new tokens its prompt leaves in the
    model's context (:func:`row_budgets`), unless ``budgets`` gives them.
    ``kv_store`` ("device" or "host") is where a sampler that keeps caches between
    proposals (power sampling) keeps them; the generation job takes it from its memory plan.
    ``setup`` is what the sampler's ``load_setup`` read from the job's extra files (a
    controller), passed to its ``prepare``.

    Randomness: one ``torch.Generator`` on the model's device, seeded with
    ``derive_seed(seed, task_name, model_name, method_name, shard)``, feeds every batch in
    turn. The same arguments give the same completions on CPU; changing ``batch_size`` changes
    which draws each problem gets (the stream is shared by the batch). A sampler may give
    rows streams of their own instead (its ``row_streams``): power sampling seeds each
    chain, SMC each prompt's particles, from the run seed and the problem, so an answer
    depends on neither its shard nor its batch.

    Time: every row carries ``shard_decode_time_s``, the wall time spent in the sampler for
    the whole shard, so time per answer (shard time / answers) means the same for every
    sampler; a sampler that runs chains records each chain's ``chain_lifetime_s`` too.
    After a resume it is the sum of each call's time: as recorded in the checkpoint for the
    calls read back, as measured now for the calls decoded (model loads, and the call a kill
    cut short, are in neither).

    ``checkpoint`` (:class:`~powersampling.checkpoints.ShardCheckpoint`, made for exactly
    these arguments): each finished call is saved to it, with the shared generator's state
    after it; calls already there, from the first on, are read back instead of decoded
    (the generator restored), so the rows are those of an uninterrupted run. A job asked
    to stop stops before decoding its next call (:class:`~.checkpoints.GenerationStopped`).

    ``log`` is a ``logging.Logger`` or any callable taking a string (one line per batch).
    """
    if len(problems) == 0:
        raise UserError(f"shard {shard} of task {task_name} has no problems")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {batch_size})")
    if prompts is None:
        prompts = shard_prompts(task, problems, tokenizer, chat_template, instruct)

    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    engine = DecodingEngine(model, eos_token_ids=eos, pad_token_id=pad, max_batch_size=batch_size)
    sampler = get_sampler(method, engine)  # validates the method's parameters
    sampler.prepare(
        setup,
        kv_store=kv_store,
        grade=task.grade_many,
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    if budgets is None:
        budgets = row_budgets(
            prompts.rows,
            prompts.ids,
            sampler.max_new_tokens(),
            engine.max_positions,
            task_name=task_name,
            model_name=model_name,
        )
    names = (task_name, model_name, method_name)
    generator = torch_generator(derive_seed(seed, *names, shard), device=engine.device)
    records, decode_time_s = _sample_in_calls(
        sampler, prompts, budgets, generator, seed=seed, names=names,
        per_call=sampler.prompts_per_call(batch_size), progress=progress, log=log,
        desc=f"{task_name}/{model_name}/{method_name} shard {shard}", checkpoint=checkpoint,
    )  # fmt: skip

    frame = pd.DataFrame.from_records(records)
    frame.insert(0, "task", task_name)
    frame["problem_id"] = [str(row["problem_id"]) for row in prompts.rows]
    frame["model"] = model_name
    frame["method"] = method_name
    frame["sampler"] = sampler.name
    frame["sampling"] = sampling_record(sampler)
    frame["seed"] = seed
    frame["shard"] = shard
    if "chain" not in frame:  # a sampler that votes names the chain that won
        frame["chain"] = 0
    frame["prompt"] = prompts.texts
    frame["completion"] = [
        tokenizer.decode(ids, skip_special_tokens=True) for ids in frame["completion_ids"]
    ]
    frame["n_prompt_tokens"] = [len(ids) for ids in prompts.ids]
    frame["token_budget"] = budgets
    frame["shard_decode_time_s"] = decode_time_s
    if "chain_lifetime_s" not in frame:  # only samplers that run chains record it
        frame["chain_lifetime_s"] = float("nan")
    return _with_schema_dtypes(frame)


def _sample_in_calls(
    sampler, prompts, budgets, generator, *, seed, names, per_call, progress, log, desc, checkpoint
) -> tuple[list[dict], float]:
    """The sampler's records for every prompt, ``per_call`` prompts a call, and the wall
    time spent in the sampler (rows of a call share their time).

    With a ``checkpoint``: the calls it holds, from the first on, are read back (the
    generator set to its state after the last of them); every call decoded is saved."""
    records: list[dict] = []
    decode_time_s = 0.0
    n = len(prompts.ids)
    n_read = 0
    reading = checkpoint is not None  # until the first call the checkpoint lacks
    with tqdm(total=n, desc=desc, file=sys.stderr, disable=not progress) as bar:
        for call, start in enumerate(range(0, n, per_call)):
            span = (start, min(start + per_call, n))
            problem_ids = [row["problem_id"] for row in prompts.rows[span[0] : span[1]]]
            piece = checkpoint.read(seed, call, span, problem_ids) if reading else None
            reading = piece is not None
            if piece is not None:
                restore_generator(generator, piece.generator_state)
                n_read += span[1] - span[0]
                _emit(log, f"{desc}: {span[1]}/{n} problems, read back from the checkpoint")
            else:
                if checkpoint is not None:
                    checkpoint.before_decoding(seed, call)
                piece = _decode_call(sampler, prompts, budgets, generator, span, seed, names)
                if checkpoint is not None:
                    checkpoint.write(seed, call, span, problem_ids, piece)
                _emit(log, f"{desc}: {span[1]}/{n} problems, batch of {span[1] - span[0]} in "
                           f"{piece.decode_time_s:.2f}s")  # fmt: skip
            decode_time_s += piece.decode_time_s
            records.extend(piece.records)
            bar.update(span[1] - span[0])
    if checkpoint is not None:
        _emit(log, f"{desc}: seed {seed}: {n_read} problems read back from the checkpoint, "
                   f"{n - n_read} decoded")  # fmt: skip
    return records, decode_time_s


def _decode_call(sampler, prompts, budgets, generator, span, seed, names) -> Piece:
    """One sampler call on the prompts of rows ``span``: its records, its wall time, and
    the shared generator's state after it."""
    batch, batch_budgets = prompts.ids[span[0] : span[1]], budgets[span[0] : span[1]]
    t0 = time.perf_counter()
    streams = sampler.row_streams(prompts.rows[span[0] : span[1]], seed, names)
    if None in batch_budgets:  # a sampler without a token budget
        results = sampler.sample(batch, generator, **streams)
    else:
        results = sampler.sample(batch, generator, budgets=batch_budgets, **streams)
    elapsed = time.perf_counter() - t0
    return Piece(results, elapsed, generator_state(generator))


def sampling_record(sampler) -> str:
    """The effective sampling settings of a shard, as JSON (the ``sampling`` column)."""
    record = {**sampler.sampling_record(), "generation_config": "ignored"}
    return json.dumps(record, sort_keys=True)


class ShardPrompts(NamedTuple):
    """A shard's problem rows, their prompt texts and the prompts' token ids, in order."""

    rows: list[dict]
    texts: list[str]
    ids: list[list[int]]

    def subset(self, keep: list[int]) -> ShardPrompts:
        return ShardPrompts(
            [self.rows[i] for i in keep], [self.texts[i] for i in keep], [self.ids[i] for i in keep]
        )


def shard_prompts(
    task, problems: pd.DataFrame, tokenizer, chat_template: bool = False, instruct: bool = False
) -> ShardPrompts:
    """The shard's rows, their prompts, and the prompts' token ids.

    A raw prompt is tokenised as the model's tokenizer does by default (with the special
    tokens it adds, e.g. a BOS token), which is also how published runs that call
    ``tokenizer.encode`` fed it; a chat-templated prompt already contains its own.
    """
    rows = problems.to_dict("records")
    prompts = [task.prompt(row, tokenizer, chat_template, instruct) for row in rows]
    encoded = tokenizer(prompts, add_special_tokens=not chat_template)["input_ids"]
    return ShardPrompts(rows, prompts, [list(ids) for ids in encoded])


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
