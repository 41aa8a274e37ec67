"""One function per workflow stage, called by the thin scripts in ``workflow/scripts``.

A stage has one name: rule ``x`` runs ``workflow/scripts/x.py``, which calls ``x`` here.

Each function reads its inputs, calls the library, and writes its outputs atomically.
They take plain values (paths, config sections), never Snakemake objects, so they can be
run and tested without Snakemake.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.tasks import get_task

Log = Callable[[str], None]


def _no_log(message: str) -> None:
    pass


def _gib_to_bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * 2**30)


# --------------------------------------------------------------------------------------
# Data


def synthetic_data(task_name: str, task: dict[str, Any], *, seed: int, out_path) -> pd.DataFrame:
    """Load (or generate) a task's problems and write them as one Parquet file."""
    task_obj = get_task(task_name, task, seed=seed)
    problems = task_obj.load()
    expected = task_obj.size
    if len(problems) == 0:
        raise UserError(f"task {task_name} has no problems")
    if len(problems) < expected:
        raise UserError(
            f"task {task_name} has {len(problems)} problems but the config asks for {expected}; "
            f"lower tasks.{task_name}.limit"
        )
    problems = problems.iloc[:expected].reset_index(drop=True)
    if problems["problem_id"].duplicated().any():
        raise UserError(f"task {task_name}: problem ids are not unique")
    io.write_parquet(problems, out_path)
    return problems


def download_dataset(
    task_name: str, task: dict[str, Any], *, seed: int, out_path, log: Log = _no_log
) -> pd.DataFrame:
    """Download a benchmark (or read the local file in ``source``) into one Parquet file.

    A checksum file (``data/{task}.meta.json``) is written beside it. The file keeps every
    problem of the benchmark; shards read the first ``limit`` rows.
    """
    from powersampling.datasets import HUB_FILES, fetch_dataset

    task_obj = get_task(task_name, task, seed=seed)
    source = task.get("source") or HUB_FILES[task_obj.kind][0]
    log(f"fetching {task_obj.kind} from {source}")
    meta = fetch_dataset(task_obj.kind, source, out_path)
    if meta["rows"] < task_obj.size:
        Path(out_path).unlink(missing_ok=True)
        raise UserError(
            f"task {task_name}: {source} has {meta['rows']} problems but {task_obj.size} "
            f"are asked for; lower tasks.{task_name}.limit"
        )
    log(f"{meta['rows']} problems, sha256 {meta['source_sha256']}")
    return pd.read_parquet(out_path)


def task_with_data(task_name: str, task: dict[str, Any], *, seed: int, data_path):
    """The task, reading its problems from the workflow's data file."""
    return get_task(task_name, {**task, "data_path": str(data_path)}, seed=seed)


# --------------------------------------------------------------------------------------
# Models


def train_toy_model(
    settings: dict[str, Any],
    *,
    holdout_paths: Sequence[str],
    seed: int,
    out_dir,
    threads: int = 1,
    log: Log = _no_log,
) -> dict:
    """Train the toy model with the evaluation problems held out of its training data."""
    import torch

    from powersampling.toy import train

    torch.set_num_threads(threads)
    holdout = set()
    for path in holdout_paths:
        holdout.update(pd.read_parquet(path, columns=["question"])["question"])
    log(f"training the toy model with {settings}; {len(holdout)} questions held out")
    return train.train_toy_model(
        out_dir,
        model_shape=settings.get("model_shape"),
        train=settings.get("train"),
        holdout_questions=holdout,
        seed=seed,
        log=log,
    )


def build_rehearsal_model(model: dict[str, Any], *, seed: int, out_dir, log: Log = _no_log) -> dict:
    """A randomly initialised model of a published architecture, with its real tokenizer,
    saved as a local model folder (read by generation exactly as a downloaded model is)."""
    from powersampling.rehearsal import build_rehearsal_model as build

    settings = model["rehearsal"]
    log(f"building a rehearsal model of {settings['architecture']} with {settings}")
    described = build(
        settings["architecture"],
        out_dir,
        num_hidden_layers=settings.get("num_hidden_layers"),
        seed=seed,
        dtype=model.get("dtype", "auto"),
    )
    log(f"built {described}")
    return described


def download_model(source: str, *, revision: str | None, out_dir, log: Log = _no_log) -> dict:
    """Stage the hub model ``source`` at one commit into ``out_dir`` (see models.download_model)."""
    from powersampling.models import download_model as download

    return download(source, out_dir, revision=revision, log=log)


# --------------------------------------------------------------------------------------
# Generation


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
    log: Log = _no_log,
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

    task_obj, problems, shard_rows, prompt_ids, source, tokenizer = _shard_inputs(
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
    lm, tokenizer = _load_model(model, source, device, tokenizer, log)
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


def _load_model(model: dict[str, Any], source: str, device: str, tokenizer, log: Log):
    """The model of a config entry from its local folder, truncated when it is a truncation."""
    from powersampling.models import load_model

    lm, tokenizer = load_model(
        source,
        dtype=model.get("dtype", "auto"),
        device=device,
        local_files_only=True,
        tokenizer=tokenizer,
        quantization=model.get("quantization"),
    )
    truncation = model.get("truncation")
    if truncation:
        from powersampling.truncation import truncate_model

        truncate_model(lm, truncation["layers"], truncation["keep_last"], name=truncation["of"])
        log(f"kept blocks {lm.config.truncation['kept']} of {truncation['of']}")
    return lm, tokenizer


# --------------------------------------------------------------------------------------
# Inside the model: LogitLens and activation patching


def _shard_inputs(
    model, model_dir, task_name, task, task_seed, data_path, rows, threads, shard=None
):
    """What a generation, LogitLens or patching job reads before loading weights: the task,
    the shard's problems and rows, their prompts' token ids, the model folder (made by the
    workflow or named in the config: read locally, never from the hub) and its tokenizer."""
    import torch

    from powersampling.generation import shard_prompts
    from powersampling.models import load_tokenizer
    from powersampling.tasks.prompts import uses_chat_template

    torch.set_num_threads(threads)
    task_obj = task_with_data(task_name, task, seed=task_seed, data_path=data_path)
    problems = task_obj.load().iloc[rows[0] : rows[1]].reset_index(drop=True)
    if problems.empty:
        where = f"shard {shard} of task {task_name}" if shard is not None else f"task {task_name}"
        raise UserError(f"{where} has no problems (rows {rows[0]}-{rows[1]})")
    source = str(model_dir or model["source"])
    tokenizer = load_tokenizer(source, local_files_only=True)
    chat_template = uses_chat_template(model.get("chat_template", False), task_name)
    shard, _, prompt_ids = shard_prompts(
        task_obj, problems, tokenizer, chat_template, bool(model.get("instruct", False))
    )
    return task_obj, problems, shard, prompt_ids, source, tokenizer


def logit_lens_shard(
    *,
    data_path,
    model_name: str,
    model: dict[str, Any],
    model_dir: str | None,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    rows: tuple[int, int],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    threads: int,
    out_path,
    log: Log = _no_log,
) -> pd.DataFrame:
    """LogitLens on one shard: the model answers each prompt greedily, then every block's
    residual stream is read out through the final norm and LM head, at the last prompt
    token and over the answer (:func:`powersampling.interp.logit_lens.logit_lens`).
    Rows also say whether the greedy answer is right, so the lens can be split by it."""
    from powersampling.engine import DecodingEngine
    from powersampling.interp.logit_lens import logit_lens
    from powersampling.models import eos_token_ids
    from powersampling.samplers import get_sampler
    from powersampling.seeding import torch_generator

    task_obj, _, shard, prompt_ids, source, tokenizer = _shard_inputs(
        model, model_dir, task_name, task, task_seed, data_path, rows, threads
    )
    lm, tokenizer = _load_model(model, source, device, tokenizer, log)
    engine = DecodingEngine(
        lm, eos_token_ids(lm, tokenizer), tokenizer.pad_token_id, max_batch_size=batch_size
    )
    greedy = get_sampler({"sampler": "greedy", "max_new_tokens": max_new_tokens}, engine)
    answers = greedy.sample(prompt_ids, torch_generator(0, lm.device))  # deterministic
    log(f"answered {len(answers)} prompts greedily")
    completions = [tokenizer.decode(a["completion_ids"], skip_special_tokens=True) for a in answers]
    grades = task_obj.grade_many(completions, shard)
    lens = logit_lens(
        lm,
        [p + a["completion_ids"] for p, a in zip(prompt_ids, answers, strict=True)],
        [len(p) for p in prompt_ids],
        batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id,
        name=model_name,
    )
    per_row = pd.DataFrame(
        {
            "problem_id": [row["problem_id"] for row in shard],
            "difficulty": [_difficulty(row) for row in shard],
            "correct": [g.correct for g in grades],
            "n_answer_tokens": [len(a["completion_ids"]) for a in answers],
        }
    )
    frame = per_row.iloc[lens["row"]].reset_index(drop=True).join(lens.drop(columns="row"))
    frame.insert(0, "model", model_name)
    frame.insert(0, "task", task_name)
    io.write_parquet(frame, out_path)
    log(f"wrote {len(frame)} rows ({lens['layer'].nunique()} layers) to {out_path}")
    return frame


def patching_shard(
    *,
    data_path,
    model_name: str,
    model: dict[str, Any],
    model_dir: str | None,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    rows: tuple[int, int],
    max_batch: int,
    device: str,
    threads: int,
    out_path,
    counts_path,
    log: Log = _no_log,
) -> pd.DataFrame:
    """Activation patching on one shard of a pairs task, every layer and prompt position
    (:func:`powersampling.interp.patching.patch_pairs`). The answer is the final answer
    for instruction-style prompts, the worked answer otherwise. Pairs are dropped, and
    counted in ``counts_path``, when their prompts tokenize to different lengths or their
    answers begin with the same token (the logit difference would compare a token with
    itself); the pairs task's own drops are added by :func:`collect_patching`."""
    from powersampling.interp.patching import patch_pairs

    task_obj, problems, shard, prompt_ids, source, tokenizer = _shard_inputs(
        model, model_dir, task_name, task, task_seed, data_path, rows, threads
    )
    if task_obj.kind != "pairs":
        raise UserError(f"activation patching needs a pairs task; {task_name} is {task_obj.kind}")
    worked = task_obj.prompt_style == "worked" and "solution" in problems
    answer_text = [row["solution"] if worked else row["answer"] for row in shard]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    by_pair: dict[str, dict[str, int]] = {}
    for i, row in enumerate(shard):
        by_pair.setdefault(row["pair_id"], {})[row["variant"]] = i
    pairs, counts = [], {"pairs": 0, "different_lengths": 0, "same_first_answer_token": 0}
    for pair_id, index in by_pair.items():
        if set(index) != {"clean", "corrupted"}:
            raise UserError(f"{task_name}: pair {pair_id} is split across shards; make "
                            "shard_size even")  # fmt: skip
        clean, corrupted = index["clean"], index["corrupted"]
        counts["pairs"] += 1
        if len(prompt_ids[clean]) != len(prompt_ids[corrupted]):
            counts["different_lengths"] += 1
        elif answer_ids[clean][0] == answer_ids[corrupted][0]:
            counts["same_first_answer_token"] += 1
        else:
            pairs.append(
                {
                    "pair_id": pair_id,
                    "clean_ids": prompt_ids[clean],
                    "corrupted_ids": prompt_ids[corrupted],
                    "clean_answer": answer_ids[clean],
                    "corrupted_answer": answer_ids[corrupted],
                }
            )
    counts["used"] = len(pairs)
    log(f"{counts}")
    lm, tokenizer = _load_model(model, source, device, tokenizer, log)
    frame = patch_pairs(lm, pairs, max_batch=max_batch, name=model_name)
    info = problems.drop_duplicates("pair_id").set_index("pair_id")
    frame["difficulty"] = frame["pair_id"].map(info["difficulty"]) if "difficulty" in info else None
    frame.insert(0, "model", model_name)
    frame.insert(0, "task", task_name)
    io.write_parquet(frame, out_path)
    io.write_atomic(counts_path, lambda tmp: tmp.write_text(json.dumps(counts, indent=2) + "\n"))
    log(f"wrote {len(frame)} rows ({len(pairs)} pairs) to {out_path}")
    return frame


def collect_logit_lens(
    *, paths: Sequence[str], n_boot: int, level: float, seed: int, out_path, log: Log = _no_log
) -> pd.DataFrame:
    """The LogitLens table over every shard (:func:`~powersampling.interp.tables.lens_table`)."""
    from powersampling.interp.tables import lens_table

    table = lens_table(io.read_parquet(list(paths)), n_boot=n_boot, level=level, seed=seed)
    io.write_table(table, out_path)
    log(f"LogitLens table: {len(table)} rows from {len(paths)} shards")
    return table


def collect_patching(
    *,
    paths: Sequence[str],
    counts_paths: Sequence[str],
    tasks: dict[str, tuple[dict[str, Any], int]],
    n_boot: int,
    level: float,
    seed: int,
    outputs: dict[str, str],
    log: Log = _no_log,
) -> dict[str, pd.DataFrame]:
    """The patching tables over every shard (see ``interp.tables.patching_tables``).

    Pair counts are the jobs' (different lengths, same first answer token, used) plus the
    pairs tasks' own (equal answers, out of range), per task and model."""
    from powersampling.interp.tables import patching_tables

    frame = io.read_parquet(list(paths))
    counts = []
    for path in counts_paths:
        task, model = Path(path).parts[-3:-1]
        shard_counts = json.loads(Path(path).read_text())
        counts.append({"task": task, "model": model, **shard_counts})
    # The task's own drops happened once, before the shards: one entry per task and model.
    for task_name, (task, task_seed) in tasks.items():
        dropped = get_task(task_name, task, seed=task_seed).load_with_counts()[1]
        for model in dict.fromkeys(c["model"] for c in counts if c["task"] == task_name):
            counts.append({"task": task_name, "model": model, **dropped})
    tables = patching_tables(frame, counts, n_boot=n_boot, level=level, seed=seed)
    io.write_table(tables["patching_heatmap"], outputs["heatmap"])
    io.write_table(tables["patching_by_layer"], outputs["by_layer"])
    pairs = tables["patching_pairs"]
    io.write_atomic(outputs["pairs"], lambda tmp: pairs.to_csv(tmp, index=False))
    log(f"patching tables from {len(paths)} shards; pairs:\n{pairs.to_string(index=False)}")
    return tables


def collect_truncation(
    *,
    accuracy_path,
    lens_path,
    models: dict[str, Any],
    outputs: dict[str, str],
    log: Log = _no_log,
) -> pd.DataFrame:
    """Accuracy against layers kept, and beside it the full model's LogitLens at that layer
    (:func:`~powersampling.interp.tables.truncation_table`, ``lens_vs_truncation``)."""
    from powersampling.interp.tables import lens_vs_truncation, truncation_table

    table = truncation_table(pd.read_parquet(accuracy_path), models)
    lens = pd.read_parquet(lens_path) if lens_path else pd.DataFrame()
    io.write_table(table, outputs["truncation"])
    io.write_table(lens_vs_truncation(table, lens), outputs["lens_vs_truncation"])
    log(f"truncation table: {len(table)} rows")
    return table


# --------------------------------------------------------------------------------------
# Dynamic power sampling: pool, question embeddings, controllers, replay


def question_embeddings(
    *,
    data_path,
    model_name: str,
    model: dict[str, Any],
    model_dir: str | None,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    rows: tuple[int, int],
    layer: int | None,
    batch_size: int,
    device: str,
    threads: int,
    out_path,
    log: Log = _no_log,
) -> pd.DataFrame:
    """Every question's embedding (:mod:`powersampling.dps.embeddings`): one row per
    problem with ``layer`` and ``embedding`` (float32 list)."""
    from powersampling.dps.embeddings import question_embeddings as embed

    _, _, shard, prompt_ids, source, tokenizer = _shard_inputs(
        model, model_dir, task_name, task, task_seed, data_path, rows, threads
    )
    lm, tokenizer = _load_model(model, source, device, tokenizer, log)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors, layer = embed(
        lm, prompt_ids, layer=layer, batch_size=batch_size, pad_token_id=pad, name=model_name
    )
    frame = pd.DataFrame(
        {
            "problem_id": [str(row["problem_id"]) for row in shard],
            "layer": layer,
            "embedding": list(vectors),
        }
    )
    io.write_parquet(frame, out_path)
    log(f"embedded {len(frame)} questions at block {layer} ({vectors.shape[1]} dimensions)")
    return frame


def dps_pool(
    *,
    graded_paths: Sequence[str],
    task_name: str,
    model_name: str,
    pool_method: str,
    k_max: int,
    train_share: float,
    seed: int,
    out_path,
    log: Log = _no_log,
) -> pd.DataFrame:
    """The trajectory pool of one task and model (seeds 0..k_max-1 of ``pool_method``), its
    questions split into training and held-out ones (:func:`~powersampling.dps.trajectories.
    split_questions`, seeded by the config seed and the task)."""
    from powersampling.dps.trajectories import split_questions, trajectory_pool
    from powersampling.seeding import derive_seed

    graded = io.read_parquet(list(graded_paths))
    graded = graded[(graded["model"] == model_name) & (graded["method"] == pool_method)]
    pool = trajectory_pool(graded, k_max)
    split = split_questions(pool["problem_id"], train_share, derive_seed(seed, task_name))
    pool["split"] = pool["problem_id"].map(split)
    io.write_parquet(pool, out_path)
    n = pool.drop_duplicates("problem_id")["split"].value_counts()
    log(
        f"pool of {pool['problem_id'].nunique()} questions x {k_max} trajectories: "
        f"{n.get('train', 0)} to train on, {n.get('test', 0)} held out"
    )
    return pool


def train_controller(
    *,
    pool_path,
    embeddings_path: str | None,
    controller: str,
    study: dict[str, Any],
    seed: int,
    out_path,
    log: Log = _no_log,
):
    """Train one controller on the training questions of a pool, and save it."""
    from powersampling.dps.controllers import train_controller as train
    from powersampling.dps.evaluation import embedding_matrix
    from powersampling.dps.policy import Schedule
    from powersampling.dps.trajectories import Trajectories, training_rows

    pool = pd.read_parquet(pool_path)
    traj = Trajectories.from_pool(pool[pool["split"] == "train"])
    embeddings = None
    if embeddings_path:
        embeddings = embedding_matrix(pd.read_parquet(embeddings_path), list(traj.problem_ids))
    features, labels, groups = training_rows(traj, Schedule.of(study).points, embeddings)
    log(
        f"{controller}: {len(labels)} decisions of {len(traj.problem_ids)} training questions, "
        f"{labels.mean():.2f} of them enough"
    )
    trained = train(
        controller,
        features,
        labels,
        groups,
        seed=seed,
        cv_folds=study["cv_folds"],
        n_components=study["embedding_components"],
    )
    trained.save(out_path)
    shown = {k: v for k, v in trained.info.items() if k not in ("train_questions", "out_of_fold")}
    log(f"saved {out_path}: {json.dumps(shown, default=str)}")
    return trained


def evaluate_dps(
    *,
    pool_path,
    embeddings_path: str | None,
    controller_paths: dict[str, str],
    study: dict[str, Any],
    online_taus: dict[str, list[float]],
    report: dict[str, Any],
    seed: int,
    outputs: dict[str, str],
    log: Log = _no_log,
) -> dict[str, pd.DataFrame]:
    """Replay every stopping rule on the held-out questions of one pool (see
    :func:`powersampling.dps.evaluation.evaluate`) and write its tables."""
    from powersampling.dps.controllers import Controller, uses_question
    from powersampling.dps.evaluation import evaluate
    from powersampling.dps.policy import Schedule
    from powersampling.dps.trajectories import feature_names

    pool = pd.read_parquet(pool_path)
    embeddings = pd.read_parquet(embeddings_path) if embeddings_path else None
    dim = len(embeddings["embedding"].iloc[0]) if embeddings is not None else 0
    controllers = {
        name: Controller.load(path, features=feature_names(dim if uses_question(name) else 0))
        for name, path in controller_paths.items()
    }
    tables = evaluate(
        pool,
        embeddings,
        controllers,
        Schedule.of(study),
        taus=study["taus"],
        extra_taus=online_taus,
        esc_window=study["esc_window"],
        ac_threshold=study["ac_threshold"],
        n_boot=report["bootstrap_samples"],
        level=report["ci_level"],
        seed=seed,
    )
    for name, table in tables.items():
        io.write_parquet(table, outputs[name])
    shown = tables["summary"][tables["summary"]["kind"] != "controller"]
    log(shown[["policy", "accuracy", "mean_k", "tokens_per_question"]].to_string(index=False))
    return tables


def collect_dps(
    *,
    evaluations: dict[str, dict[str, str]],
    online_paths: Sequence[str],
    methods: dict[str, dict[str, Any]],
    study: dict[str, Any],
    report: dict[str, Any],
    seed: int,
    outputs: dict[str, str],
    log: Log = _no_log,
) -> dict[str, pd.DataFrame]:
    """The DPS tables across tasks and models: the comparison in its published form
    (``dps``, also as HTML), the τ sweeps (``dps_sweep``), controller quality
    (``dps_controllers``), calibration bins (``dps_calibration``) and GBDT's permutation
    importances (``dps_importance``). ``evaluations``: "task/model" → the paths
    :func:`evaluate_dps` wrote; ``online_paths``: graded shards of the dps methods."""
    from powersampling.dps.evaluation import TABLE_COLUMNS, comparison_rows, online_summary
    from powersampling.dps.policy import Schedule

    schedule = Schedule.of(study)
    online = io.read_parquet(list(online_paths))
    parts: dict[str, list[pd.DataFrame]] = {
        k: [] for k in ("dps", "sweep", "quality", "cal", "imp")
    }
    for key, paths in evaluations.items():
        task, model = key.split("/")
        where = {"task": task, "model": model}
        summary = pd.read_parquet(paths["summary"]).assign(**where)
        parts["sweep"].append(summary)
        parts["dps"].append(comparison_rows(summary))
        parts["quality"].append(pd.read_parquet(paths["quality"]).assign(**where))
        parts["cal"].append(pd.read_parquet(paths["calibration"]).assign(**where))
        parts["imp"].append(pd.read_parquet(paths["importance"]).assign(**where))
        mine = (
            online[(online["task"] == task) & (online["model"] == model)] if len(online) else online
        )
        if len(mine):
            replay = pd.read_parquet(paths["replay"])
            rows = online_summary(
                mine,
                replay,
                methods,
                schedule,
                n_boot=report["bootstrap_samples"],
                level=report["ci_level"],
                seed=seed,
            )
            parts["dps"].append(rows.assign(**where))
    table = pd.concat(parts["dps"], ignore_index=True).reindex(columns=TABLE_COLUMNS)
    io.write_table(table, outputs["dps"])
    io.write_table(pd.concat(parts["sweep"], ignore_index=True), outputs["sweep"])
    io.write_table(pd.concat(parts["quality"], ignore_index=True), outputs["controllers"])
    io.write_table(pd.concat(parts["cal"], ignore_index=True), outputs["calibration"])
    io.write_table(pd.concat(parts["imp"], ignore_index=True), outputs["importance"])
    io.write_text_atomic(outputs["html"], dps_html(table, report["ci_level"], schedule.k_max))
    log(table.to_string(index=False))
    return {"dps": table}


def dps_html(table: pd.DataFrame, level: float, k_max: int) -> str:
    """The comparison table as the report shows it."""
    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "method": table["method"],
            "τ": table["tau"],
            f"accuracy [{level:.0%} CI]": [
                f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
                for a, lo, hi in zip(
                    table["accuracy"], table["accuracy_low"], table["accuracy_high"], strict=True
                )
            ],
            "mean k": table["mean_k"],
            "tokens / question": table["tokens_per_question"],
            "time / question (s)": table["time_per_question_s"],
            f"token saving vs k={k_max}": table["token_saving"],
            f"accuracy vs k={k_max}": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                for d, lo, hi in zip(
                    table["accuracy_vs_reference"],
                    table["accuracy_vs_reference_low"],
                    table["accuracy_vs_reference_high"],
                    strict=True,
                )
            ],
            "agrees with replay": table["agrees_with_replay"],
        }
    )
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, na_rep="")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Dynamic power sampling"
        "</title></head><body>"
        f"{body}</body></html>\n"
    )


# --------------------------------------------------------------------------------------
# Temperature reliability


def collect_reliability(
    *,
    paths: Sequence[str],
    prompts: dict[str, str],
    study: dict[str, Any],
    report: dict[str, Any],
    seed: int,
    outputs: dict[str, str],
    log: Log = _no_log,
) -> dict[str, pd.DataFrame]:
    """The reliability tables (:mod:`powersampling.reliability`) over the study's graded
    shards: ``reliability`` (also as HTML), ``reliability_bins`` and ``failures``.
    ``prompts``: task → its prompt style (``instruction`` asks for the bare number)."""
    from powersampling.reliability import annotate, reliability_tables

    graded = io.read_parquet(list(paths))
    graded = graded[
        graded["task"].isin(study["tasks"])
        & graded["model"].isin(study["models"])
        & graded["method"].isin(study["methods"])
    ]
    rows = annotate(graded, {t: style == "instruction" for t, style in prompts.items()})
    tables = reliability_tables(
        rows,
        n_boot=report["bootstrap_samples"],
        level=report["ci_level"],
        seed=seed,
        bins=study["calibration_bins"],
    )
    for name, table in tables.items():
        io.write_table(table, outputs[name])
    io.write_text_atomic(outputs["html"], reliability_html(tables["reliability"]))
    shown = ["task", "model", "method", "accuracy_strict", "accuracy_lenient", "compliance"]
    log(tables["reliability"][shown].to_string(index=False))
    return tables


def reliability_html(table: pd.DataFrame) -> str:
    """The reliability summary as the report shows it."""

    def ci(name):
        low, high = table[f"{name}_low"], table[f"{name}_high"]
        return [
            f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
            for a, lo, hi in zip(table[name], low, high, strict=True)
        ]

    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "setting": table["method"],
            "runs": table["n_runs"],
            "accuracy, strict": ci("accuracy_strict"),
            "accuracy, lenient": ci("accuracy_lenient"),
            "compliance": ci("compliance"),
            "accuracy sd across runs": table["accuracy_run_std"],
            "same answer in all runs": table["answer_agreement"],
            "same string in all runs": table["string_agreement"],
            "mean token log p (T=1)": table["logp_t1_mean"],
            "min token log p (T=1)": table["logp_t1_min"],
            "mean token log q (sampled)": table["logq_sampling_mean"],
            "ECE": table["ece"],
        }
    )
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, na_rep="")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reliability</title>"
        f"</head><body>{body}</body></html>\n"
    )


# --------------------------------------------------------------------------------------
# Grading


def grade_frame(generations: pd.DataFrame, problems: pd.DataFrame, task) -> pd.DataFrame:
    """Graded rows: the generation rows plus reference, extracted, correct, compliant, ..."""
    by_id = problems.set_index("problem_id", drop=False)
    missing = set(generations["problem_id"]) - set(by_id.index)
    if missing:
        raise UserError(
            f"generations refer to problems not in the task data: {sorted(missing)[:5]}"
        )
    rows = [by_id.loc[pid].to_dict() for pid in generations["problem_id"]]
    completions = [c if isinstance(c, str) else "" for c in generations["completion"]]
    graded = generations.copy()
    if hasattr(task, "grade_many_both"):  # graders with a second opinion (MATH, GSM8K)
        both = task.grade_many_both(completions, rows)
        grades = [grade for grade, _ in both]
        graded["correct_prm"] = [bool(prm) for _, prm in both]
    else:
        grades = task.grade_many(completions, rows)
        graded["correct_prm"] = None
    graded["reference"] = [str(r["answer"]) for r in rows]
    graded["extracted"] = [g.extracted for g in grades]
    graded["correct"] = [bool(g.correct) for g in grades]
    graded["compliant"] = [bool(g.compliant) for g in grades]
    graded["grader"] = [g.grader for g in grades]
    graded["error"] = [g.error for g in grades]
    graded["difficulty"] = pd.array([_difficulty(r) for r in rows], dtype="Int32")
    graded["steps_correct"] = pd.array([g.steps_correct for g in grades], dtype="Int32")
    return graded


def _difficulty(row: dict[str, Any]) -> int | None:
    value = row.get("difficulty")
    return None if value is None or pd.isna(value) else int(value)


def grade(
    *,
    generations_path,
    data_path,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    out_path,
    log: Log = _no_log,
) -> pd.DataFrame:
    task_obj = task_with_data(task_name, task, seed=task_seed, data_path=data_path)
    graded = grade_frame(pd.read_parquet(generations_path), task_obj.load(), task_obj)
    io.write_parquet(graded, out_path, io.GRADED_SCHEMA)
    log(
        f"graded {len(graded)} rows: {graded['correct'].mean():.3f} correct, "
        f"{graded['extracted'].isna().sum()} extraction failures"
    )
    return graded


# --------------------------------------------------------------------------------------
# Metrics


def collect_metrics(
    *,
    graded_paths: Sequence[str],
    methods: dict[str, dict],
    n_boot: int,
    level: float,
    seed: int,
    outputs: dict[str, str],
    log: Log = _no_log,
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


def accuracy_html(accuracy: pd.DataFrame, level: float) -> str:
    """The accuracy table as a small standalone HTML page for the report."""
    shown = accuracy.copy()
    pct = f"{level:.0%}"
    shown[f"accuracy ({pct} CI)"] = [
        f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
        for a, lo, hi in zip(shown["accuracy"], shown["ci_low"], shown["ci_high"], strict=True)
    ]
    columns = [
        c for c in ["task", "model", "method", "sampler", "temperature", "alpha"] if c in shown
    ]
    columns += [f"accuracy ({pct} CI)"]
    columns += [
        c
        for c in [
            "n_problems",
            "n_samples",
            "compliance_rate",
            "extraction_failure_rate",
            "mean_new_tokens",
            "mean_logp",
            "mean_tokens_decoded",
            "mean_steps_correct",
            "mean_blocks",
            "time_per_answer_s",
        ]
        if c in shown
    ]
    table = shown[columns].to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Accuracy</title>"
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
        "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "th{background:#f4f4f4}</style></head><body>"
        f"<h3>Accuracy by task, model and method ({pct} bootstrap CIs over problems)</h3>"
        f"{table}</body></html>\n"
    )


def export_alpaca_eval(
    *,
    generation_paths: Sequence[str],
    data_path,
    generator: str,
    seed: int,
    out_path,
    log: Log = _no_log,
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


def judge_alpaca_eval(outputs_path, out_dir, *, judge: dict[str, Any], log: Log = _no_log):
    """Run alpaca_eval's judge into ``out_dir`` (built beside it, renamed when complete)."""
    from powersampling.tasks.alpaca import run_alpaca_eval_judge

    out_dir = Path(out_dir)
    with io.atomic_dir(out_dir) as work:
        leaderboard = run_alpaca_eval_judge(
            outputs_path, work, annotator=judge["annotator"], api_key_env=judge["api_key_env"]
        )
    log(f"judged {outputs_path}: {out_dir / leaderboard.name}")


# --------------------------------------------------------------------------------------
# Toy-world studies (exact enumeration)


def toy_study(name: str, settings: dict[str, Any], *, seed: int, table_path, plot_path):
    """One exact study on a random tiny model whose answers can all be enumerated.

    The model has ``vocab_size`` tokens, the last of which is EOS; prompts are seeded
    random sequences of two non-EOS tokens. The studies are those of
    :data:`powersampling.toy.studies.STUDIES`.
    """
    import numpy as np

    from powersampling.toy.enumerate import random_tiny_model
    from powersampling.toy.studies import STUDIES

    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    study = STUDIES[name]
    vocab = settings["vocab_size"]
    model = random_tiny_model(vocab, seed=seed, init_std=settings["init_std"])
    eos = [vocab - 1]
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab - 1, size=2).tolist() for _ in range(settings["prompts"])]
    table = study.compute(model, prompts, eos, settings, seed=seed)
    io.write_table(table, table_path)
    study.plot(table, Path(plot_path))
    return table


# --------------------------------------------------------------------------------------
# Figures


def plot(name: str, table_path, out_path) -> None:
    """Draw the report figure ``name`` of :data:`powersampling.plots.FIGURES` from its table."""
    from powersampling.plots import FIGURES

    if name not in FIGURES:
        raise UserError(f"unknown plot {name!r}; known: {', '.join(FIGURES)}")
    FIGURES[name].draw(pd.read_parquet(table_path), Path(out_path))
