"""The DPS study's numbers for one task and model, and the tables across them.

:func:`evaluate` replays every stopping rule on the held-out questions of a pool and
summarises them (:func:`powersampling.dps.policy.summarize`), judges each controller's
p̂_enough (ROC-AUC, Brier, ECE, calibration bins; permutation importances for GBDT), and
picks each controller's τ for the comparison table without looking at held-out questions:
the largest τ whose accuracy on the *training* questions, replayed with out-of-fold p̂
(:func:`powersampling.dps.controllers.out_of_fold`), reaches that of fixed k_max there.

:func:`online_summary` adds the ``dps`` methods that ran for real, and how often they agree
with the replay of the same controller and τ (same k and same answer on a question).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from powersampling.dps.controllers import Controller, uses_question
from powersampling.dps.policy import (
    Schedule,
    baseline_replays,
    choose_tau,
    controller_quality,
    dps_replays,
    outcomes,
    summarize,
)
from powersampling.dps.trajectories import Trajectories, decision_features, enough_labels
from powersampling.errors import UserError

TABLE_COLUMNS = [
    "task",
    "model",
    "method",
    "kind",  # baseline | oracle | controller | online
    "tau",
    "n_questions",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "mean_k",
    "tokens_per_question",
    "time_per_question_s",
    "token_saving",
    "accuracy_vs_reference",
    "accuracy_vs_reference_low",
    "accuracy_vs_reference_high",
    "agrees_with_replay",
]


def embedding_matrix(embeddings: pd.DataFrame | None, problem_ids) -> np.ndarray | None:
    """Rows of ``embeddings`` (problem_id, embedding) in the order of ``problem_ids``."""
    if embeddings is None:
        return None
    by_id = dict(zip(embeddings["problem_id"].astype(str), embeddings["embedding"], strict=True))
    missing = [p for p in problem_ids if p not in by_id]
    if missing:
        raise UserError(f"no question embedding for problem {missing[0]!r}")
    return np.stack([np.asarray(by_id[p], dtype=float) for p in problem_ids])


def p_enough_matrix(
    controller: Controller, traj: Trajectories, points: list[int], embeddings: np.ndarray | None
) -> np.ndarray:
    """p̂_enough of every question at every decision point: [n, points]."""
    emb = embeddings if uses_question(controller.name) else None
    return np.stack([controller.p_enough(decision_features(traj, k, emb)) for k in points], axis=1)


def _out_of_fold_matrix(controller: Controller, traj: Trajectories, points: list[int]):
    """The controller's out-of-fold p̂ on its training questions, [n, points]."""
    oof = pd.DataFrame(controller.info["out_of_fold"])
    oof["problem_id"] = oof["problem_id"].astype(str)
    grid = oof.pivot(index="problem_id", columns="k", values="p_enough")
    return grid.loc[list(traj.problem_ids), points].to_numpy(dtype=float)


def evaluate(
    pool: pd.DataFrame,
    embeddings: pd.DataFrame | None,
    controllers: dict[str, Controller],
    schedule: Schedule,
    *,
    taus: list[float],
    extra_taus: dict[str, list[float]] | None = None,
    esc_window: int,
    ac_threshold: float,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Replays, summary, controller quality, calibration bins and importances of one pool
    (one task and model; rows with ``split``). ``extra_taus``: τ values to replay beyond the
    sweep, per controller (those of the ``dps`` methods that run for real)."""
    test = Trajectories.from_pool(pool[pool["split"] == "test"])
    train = Trajectories.from_pool(pool[pool["split"] == "train"])
    points, reference = schedule.points, f"fixed_k{schedule.k_max}"
    emb_test = embedding_matrix(embeddings, list(test.problem_ids))
    replays = [baseline_replays(test, schedule, esc_window=esc_window, ac_threshold=ac_threshold)]
    train_reference = outcomes(train, np.full(len(train.problem_ids), schedule.k_max), reference)
    chosen, quality, calibration, importance = {}, [], [], []
    labels = enough_labels(test, points)
    for name, controller in controllers.items():
        p_test = p_enough_matrix(controller, test, points, emb_test)
        grid = sorted(set(taus) | set((extra_taus or {}).get(name, [])))
        replays.append(dps_replays(test, p_test, grid, schedule, name))
        on_train = dps_replays(
            train, _out_of_fold_matrix(controller, train, points), taus, schedule, name
        )
        chosen[f"dps_{name}"] = choose_tau(
            pd.concat([train_reference, on_train]), f"dps_{name}", reference
        )
        q, bins = controller_quality(p_test, labels, points)
        quality.append(q.assign(controller=name))
        calibration.append(bins.assign(controller=name))
        if name == "gbdt":
            importance.append(permutation_importances(controller, test, points, labels, seed=seed))
    replay = pd.concat(replays, ignore_index=True)
    summary = summarize(replay, reference, n_boot=n_boot, level=level, seed=seed)
    summary["kind"] = [_kind(p) for p in summary["policy"]]
    summary["chosen"] = [
        p in chosen and np.isclose(t, chosen[p])
        for p, t in zip(summary["policy"], summary["tau"], strict=True)
    ]
    return {
        "replay": replay,
        "summary": summary,
        "quality": pd.concat(quality, ignore_index=True) if quality else pd.DataFrame(),
        "calibration": pd.concat(calibration, ignore_index=True) if calibration else pd.DataFrame(),
        "importance": pd.concat(importance, ignore_index=True)
        if importance
        else pd.DataFrame(columns=["feature", "importance_mean", "importance_std", "scoring"]),
    }


def _kind(policy: str) -> str:
    if policy.startswith("dps_"):
        return "controller"
    return "oracle" if policy == "oracle" else "baseline"


def permutation_importances(
    controller: Controller,
    traj: Trajectories,
    points: list[int],
    labels: np.ndarray,
    *,
    seed: int,
    n_repeats: int = 10,
) -> pd.DataFrame:
    """How much the held-out ROC-AUC (log loss when one label only) drops when one
    feature is shuffled, per feature: mean and spread over ``n_repeats`` shuffles."""
    from sklearn.inspection import permutation_importance

    x = pd.concat([decision_features(traj, k) for k in points], ignore_index=True)
    y = np.concatenate([labels[:, i] for i in range(len(points))])
    scoring = "roc_auc" if 0 < y.sum() < len(y) else "neg_log_loss"
    if scoring == "neg_log_loss" or controller.info.get("degenerate"):
        return pd.DataFrame(
            {"feature": x.columns, "importance_mean": np.nan, "importance_std": np.nan,
             "scoring": "none: one label only or a constant controller"}
        )  # fmt: skip
    result = permutation_importance(
        controller.estimator, x[controller.features], y, scoring=scoring,
        n_repeats=n_repeats, random_state=seed % 2**32,
    )  # fmt: skip
    return pd.DataFrame(
        {
            "feature": controller.features,
            "importance_mean": result.importances_mean,
            "importance_std": result.importances_std,
            "scoring": scoring,
        }
    ).sort_values("importance_mean", ascending=False, ignore_index=True)


def comparison_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The published-form table's rows of one pool: the baselines, the oracle, and each
    controller at its chosen τ."""
    keep = (summary["kind"] != "controller") | summary["chosen"]
    return summary[keep].rename(columns={"policy": "method"})


def online_summary(
    graded: pd.DataFrame,
    replay: pd.DataFrame,
    methods: dict[str, dict[str, Any]],
    schedule: Schedule,
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> pd.DataFrame:
    """The ``dps`` methods that ran for real on one task and model, in the summary's
    columns, with ``agrees_with_replay``: the share of questions (seed 0) on which the run
    used the same k and gave the same answer as the replay of its controller and τ."""
    from powersampling.dps.votes import vote_key

    rows = []
    reference = replay[replay["policy"] == f"fixed_k{schedule.k_max}"].set_index("problem_id")
    for method, group in graded.groupby("method", sort=True):
        params = methods[method]
        k = np.array([trajectories_used(t, schedule) for t in group["sampler_trace"]])
        group = group.assign(k=k, problem_id=group["problem_id"].astype(str))
        summary = summarize(
            pd.concat(
                [
                    reference.reset_index(),
                    pd.DataFrame(
                        {
                            "policy": method,
                            "tau": params["tau"],
                            "problem_id": group["problem_id"],
                            "k": group["k"],
                            "correct": group["correct"].astype(bool),
                            "tokens": group["tokens_decoded"].astype(float),
                            "time_s": _time_per_row(group),
                        }
                    ),
                ],
                ignore_index=True,
            ),
            f"fixed_k{schedule.k_max}",
            n_boot=n_boot,
            level=level,
            seed=seed,
        )
        row = summary[summary["policy"] == method].iloc[0].to_dict()
        mine = replay[
            (replay["policy"] == f"dps_{params['controller']}")
            & np.isclose(replay["tau"], params["tau"])
        ].set_index("problem_id")
        first = group[group["seed"] == 0].set_index("problem_id")
        same = [
            pid in mine.index
            and mine.loc[pid, "k"] == first.loc[pid, "k"]
            and _answer(mine.loc[pid, "answer"]) == vote_key(first.loc[pid, "extracted"])
            for pid in first.index
        ]
        row.update(kind="online", agrees_with_replay=float(np.mean(same)) if same else np.nan)
        row["method"] = row.pop("policy")
        rows.append(row)
    return pd.DataFrame(rows)


def _answer(value):
    """An answer key as stored (a missing one reads back as NaN or None): None or the key."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def trajectories_used(trace, schedule: Schedule) -> int:
    """Trajectories a ``dps`` row used, from its decisions (``sampler_trace``)."""
    records = [] if trace is None else [dict(r) for r in trace]
    if not records:  # no decision: k_start already reached k_max
        return schedule.k_start
    last = records[-1]
    return int(last["k"] + (schedule.k_step if last["more"] else 0))


def _time_per_row(group: pd.DataFrame) -> np.ndarray:
    """Each row's share of its shard's decoding time (rows of a shard and seed share it)."""
    n = group.groupby(["seed", "shard"])["problem_id"].transform("size")
    return (group["shard_decode_time_s"] / n).to_numpy(dtype=float)
