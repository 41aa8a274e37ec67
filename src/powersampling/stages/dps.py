"""Stages of ``rules/dps.smk``: question embeddings, the trajectory pool, controllers
trained and replayed, and the DPS tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.stages.common import Log, no_log
from powersampling.stages.html import dps_html
from powersampling.stages.shards import ShardJob


def question_embeddings(
    job: ShardJob,
    *,
    layer: int | None,
    batch_size: int,
    out_path,
    log: Log = no_log,
) -> pd.DataFrame:
    """Every question's embedding (:mod:`powersampling.dps.embeddings`): one row per
    problem with ``layer`` and ``embedding`` (float32 list)."""
    from powersampling.dps.embeddings import question_embeddings as embed

    inputs = job.read_inputs()
    lm, tokenizer = job.load_model(inputs.tokenizer, log)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors, layer = embed(
        lm,
        inputs.prompt_ids,
        layer=layer,
        batch_size=batch_size,
        pad_token_id=pad,
        name=job.model_name,
    )
    frame = pd.DataFrame(
        {
            "problem_id": [str(row["problem_id"]) for row in inputs.rows],
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
    log: Log = no_log,
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
    log: Log = no_log,
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
    log: Log = no_log,
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
    log: Log = no_log,
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
