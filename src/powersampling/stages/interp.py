"""Stages of ``rules/interp.smk``: LogitLens and activation patching on one shard, their
tables over every shard, and the truncated models' table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log, row_difficulty
from powersampling.stages.shards import ShardJob
from powersampling.tasks import get_task


def logit_lens_shard(
    job: ShardJob,
    *,
    max_new_tokens: int,
    batch_size: int,
    out_path,
    log: Log = no_log,
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

    inputs = job.read_inputs()
    lm, tokenizer = job.load_model(inputs.tokenizer, log)
    engine = DecodingEngine(
        lm, eos_token_ids(lm, tokenizer), tokenizer.pad_token_id, max_batch_size=batch_size
    )
    greedy = get_sampler({"sampler": "greedy", "max_new_tokens": max_new_tokens}, engine)
    answers = greedy.sample(inputs.prompt_ids, torch_generator(0, lm.device))  # deterministic
    log(f"answered {len(answers)} prompts greedily")
    completions = [tokenizer.decode(a["completion_ids"], skip_special_tokens=True) for a in answers]
    grades = inputs.task.grade_many(completions, inputs.rows)
    lens = logit_lens(
        lm,
        [p + a["completion_ids"] for p, a in zip(inputs.prompt_ids, answers, strict=True)],
        [len(p) for p in inputs.prompt_ids],
        batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id,
        name=job.model_name,
    )
    per_row = pd.DataFrame(
        {
            "problem_id": [row["problem_id"] for row in inputs.rows],
            "difficulty": [row_difficulty(row) for row in inputs.rows],
            "correct": [g.correct for g in grades],
            "n_answer_tokens": [len(a["completion_ids"]) for a in answers],
        }
    )
    frame = per_row.iloc[lens["row"]].reset_index(drop=True).join(lens.drop(columns="row"))
    frame.insert(0, "model", job.model_name)
    frame.insert(0, "task", job.task_name)
    io.write_parquet(frame, out_path)
    log(f"wrote {len(frame)} rows ({lens['layer'].nunique()} layers) to {out_path}")
    return frame


def patching_shard(
    job: ShardJob,
    *,
    max_batch: int,
    out_path,
    counts_path,
    log: Log = no_log,
) -> pd.DataFrame:
    """Activation patching on one shard of a pairs task, every layer and prompt position
    (:func:`powersampling.interp.patching.patch_pairs`). The answer is the final answer
    for instruction-style prompts, the worked answer otherwise. Pairs are dropped, and
    counted in ``counts_path``, when their prompts tokenize to different lengths or their
    answers begin with the same token (the logit difference would compare a token with
    itself); the pairs task's own drops are added by :func:`collect_patching`."""
    from powersampling.interp.patching import patch_pairs

    inputs = job.read_inputs()
    task, problems, rows, prompt_ids = inputs.task, inputs.problems, inputs.rows, inputs.prompt_ids
    tokenizer = inputs.tokenizer
    if task.kind != "pairs":
        raise UserError(f"activation patching needs a pairs task; {job.task_name} is {task.kind}")
    worked = task.prompt_style == "worked" and "solution" in problems
    answer_text = [row["solution"] if worked else row["answer"] for row in rows]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    by_pair: dict[str, dict[str, int]] = {}
    for i, row in enumerate(rows):
        by_pair.setdefault(row["pair_id"], {})[row["variant"]] = i
    pairs, counts = [], {"pairs": 0, "different_lengths": 0, "same_first_answer_token": 0}
    for pair_id, index in by_pair.items():
        if set(index) != {"clean", "corrupted"}:
            raise UserError(f"{job.task_name}: pair {pair_id} is split across shards; make "
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
    lm, _ = job.load_model(tokenizer, log)
    frame = patch_pairs(lm, pairs, max_batch=max_batch, name=job.model_name)
    info = problems.drop_duplicates("pair_id").set_index("pair_id")
    frame["difficulty"] = frame["pair_id"].map(info["difficulty"]) if "difficulty" in info else None
    frame.insert(0, "model", job.model_name)
    frame.insert(0, "task", job.task_name)
    io.write_parquet(frame, out_path)
    io.write_atomic(counts_path, lambda tmp: tmp.write_text(json.dumps(counts, indent=2) + "\n"))
    log(f"wrote {len(frame)} rows ({len(pairs)} pairs) to {out_path}")
    return frame


def collect_logit_lens(
    *, paths: Sequence[str], n_boot: int, level: float, seed: int, out_path, log: Log = no_log
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
    log: Log = no_log,
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
    log: Log = no_log,
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
