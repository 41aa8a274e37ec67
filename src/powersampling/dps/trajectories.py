"""The trajectory pool, the ``enough(k)`` labels, and the features of a decision at k.

The pool holds ``k_max`` trajectories per question: trajectory j is seed j of a power method
(its chains are seeded per problem, so trajectory j is the same whichever run makes it). Its
table (:func:`trajectory_pool`) has one row per question and trajectory. For computing, the
pool is a :class:`Trajectories`: per-question arrays [questions, trajectories].

Labels: for a decision point k < k_max, ``enough(k)`` is true when the majority answer of the
first k trajectories is at least as correct as the majority of all k_max
(:mod:`powersampling.dps.votes`).

Features at decision k (:func:`decision_features`) read the first k trajectories only: per
diagnostic (:data:`DIAGNOSTICS`) its mean, min and max over them; the share of the top
answer; the number of distinct answers; the share of format-compliant answers; and k. A
controller that sees the question (MLP-HQ) also gets its embedding (``q_0``, ``q_1``, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from powersampling.dps.votes import NO_VOTE, majority, vote_counts, vote_key
from powersampling.errors import UserError
from powersampling.seeding import derive_seed, numpy_rng

# Per-trajectory diagnostics: column of the generation table → what it is.
DIAGNOSTICS: dict[str, str] = {
    "mean_entropy": "mean over the answer's tokens of the entropy (nats) of the base model's "
    "next-token distribution at T=1",
    "perplexity": "exp(-mean log p) of the answer's tokens, base model at T=1",
    "self_confidence": "mean over the answer's tokens of the base model's top-1 probability",
    "mean_token_prob": "mean over the answer's tokens of the base model's probability of the "
    "token chosen",
    "acceptance_rate": "accepted / proposed Metropolis-Hastings moves of the trajectory's "
    "chain (0 when it proposed none)",
    "tokens_decoded": "tokens the trajectory's chain decoded, rejected proposals included",
    "n_new_tokens": "length of the trajectory's answer in tokens",
}
SUMMARIES = ("mean", "min", "max")
VOTE_FEATURES: dict[str, str] = {
    "top_answer_share": "votes for the leading answer / k (trajectories without answer count in k)",
    "distinct_answers": "number of different answers among the k trajectories",
    "compliant_share": "share of the k trajectories whose answer is in the asked format",
    "k": "trajectories so far",
}
QUESTION_PREFIX = "q_"  # question embedding features: q_0, q_1, ...

POOL_COLUMNS = [
    "task",
    "model",
    "problem_id",
    "trajectory",
    "answer",
    "correct",
    "compliant",
    "logp_sum",
    *DIAGNOSTICS,
    "time_s",
    "split",
]


def feature_names(embedding_dim: int = 0) -> list[str]:
    """The features of a decision, in order; with the question's embedding when > 0."""
    names = [f"{d}_{s}" for d in DIAGNOSTICS for s in SUMMARIES] + list(VOTE_FEATURES)
    return names + [f"{QUESTION_PREFIX}{i}" for i in range(embedding_dim)]


def decision_points(k_start: int, k_step: int, k_max: int) -> list[int]:
    """The k at which a controller decides: k_start, k_start + k_step, ... below k_max."""
    return list(range(k_start, k_max, k_step))


@dataclass(frozen=True)
class Trajectories:
    """Per-question arrays over trajectories, [questions, trajectories] each.

    ``correct`` is the grade (the replay reads it; a controller never does). Rows are in the
    order of ``problem_ids``; trajectory j is column j.
    """

    problem_ids: np.ndarray  # [n] str
    keys: np.ndarray  # [n, K] object: answer key, or None (no answer)
    correct: np.ndarray  # [n, K] bool
    compliant: np.ndarray  # [n, K] bool
    logp: np.ndarray  # [n, K] float: log p of the answer, base model at T=1
    diagnostics: dict[str, np.ndarray]  # name -> [n, K] float
    time_s: np.ndarray  # [n, K] float: decoding time attributed to the trajectory

    @property
    def n_trajectories(self) -> int:
        return self.keys.shape[1]

    def first(self, k: int) -> Trajectories:
        """The first k trajectories of every question."""
        if not 1 <= k <= self.n_trajectories:
            raise UserError(f"k = {k} is outside 1..{self.n_trajectories} trajectories")
        return replace(
            self,
            keys=self.keys[:, :k],
            correct=self.correct[:, :k],
            compliant=self.compliant[:, :k],
            logp=self.logp[:, :k],
            diagnostics={n: a[:, :k] for n, a in self.diagnostics.items()},
            time_s=self.time_s[:, :k],
        )

    def rows(self, index) -> Trajectories:
        """The questions selected by ``index`` (a boolean mask or positions)."""
        return replace(
            self,
            problem_ids=self.problem_ids[index],
            keys=self.keys[index],
            correct=self.correct[index],
            compliant=self.compliant[index],
            logp=self.logp[index],
            diagnostics={n: a[index] for n, a in self.diagnostics.items()},
            time_s=self.time_s[index],
        )

    @classmethod
    def from_pool(cls, pool: pd.DataFrame) -> Trajectories:
        """From pool rows (:data:`POOL_COLUMNS`): every question needs trajectories 0..K-1."""
        if pool.empty:
            raise UserError("the trajectory pool is empty")
        pool = pool.sort_values(["problem_id", "trajectory"], kind="stable")
        ids = pool["problem_id"].astype(str).unique()
        k = pool.groupby("problem_id", sort=False).size()
        expected = np.arange(int(k.max()))
        bad = [
            pid
            for pid, group in pool.groupby("problem_id", sort=True)["trajectory"]
            if not np.array_equal(np.sort(group.to_numpy()), expected)
        ]
        if bad:
            raise UserError(
                f"{len(bad)} questions lack some of trajectories 0..{len(expected) - 1} "
                f"(e.g. {bad[0]!r}): every question needs all of them"
            )
        n, K = len(ids), len(expected)

        def grid(column, dtype=float) -> np.ndarray:
            return pool[column].to_numpy(dtype=dtype).reshape(n, K)

        return cls(
            problem_ids=np.asarray(ids, dtype=object),
            keys=np.array(
                [None if a is None or a != a else str(a) for a in pool["answer"]], dtype=object
            ).reshape(n, K),
            correct=grid("correct", bool),
            compliant=grid("compliant", bool),
            logp=grid("logp_sum"),
            diagnostics={d: grid(d) for d in DIAGNOSTICS},
            time_s=grid("time_s"),
        )


def representatives(traj: Trajectories) -> np.ndarray:
    """Per question, the trajectory representing the majority answer of all of its
    trajectories ([n] int; :data:`~powersampling.dps.votes.NO_VOTE` when none has one)."""
    return np.array(
        [
            majority(list(keys), list(logps))
            for keys, logps in zip(traj.keys, traj.logp, strict=True)
        ],
        dtype=int,
    )


def vote_correct(traj: Trajectories) -> np.ndarray:
    """Per question, whether the majority answer of its trajectories is right ([n] bool)."""
    rep = representatives(traj)
    rows = np.arange(len(rep))
    return (rep != NO_VOTE) & traj.correct[rows, np.maximum(rep, 0)]


def enough_labels(traj: Trajectories, points: Sequence[int]) -> np.ndarray:
    """``enough(k)`` per question and decision point: [n, len(points)] bool, true when the
    vote of the first k trajectories is at least as correct as the vote of all of them."""
    final = vote_correct(traj)
    return np.stack([vote_correct(traj.first(k)) >= final for k in points], axis=1)


def decision_features(
    traj: Trajectories, k: int, embeddings: np.ndarray | None = None
) -> pd.DataFrame:
    """The features of the decision at k, one row per question (:func:`feature_names`).

    Only the first k trajectories are read; ``embeddings`` ([n, D], rows as ``traj``) adds
    the question's embedding.
    """
    seen = traj.first(k)
    columns: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():  # all-NaN rows (empty answers) give NaN, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, values in seen.diagnostics.items():
            columns[f"{name}_mean"] = np.nanmean(values, axis=1)
            columns[f"{name}_min"] = np.nanmin(values, axis=1)
            columns[f"{name}_max"] = np.nanmax(values, axis=1)
    counts = [vote_counts(list(keys)) for keys in seen.keys]
    columns["top_answer_share"] = np.array([max(c.values(), default=0) / k for c in counts])
    columns["distinct_answers"] = np.array([len(c) for c in counts], dtype=float)
    columns["compliant_share"] = seen.compliant.mean(axis=1)
    columns["k"] = np.full(len(seen.problem_ids), float(k))
    frame = pd.DataFrame(columns)
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=float)
        if embeddings.shape[0] != len(frame):
            raise UserError(f"{embeddings.shape[0]} question embeddings for {len(frame)} questions")
        names = [f"{QUESTION_PREFIX}{i}" for i in range(embeddings.shape[1])]
        frame = pd.concat([frame, pd.DataFrame(embeddings, columns=names)], axis=1)
    return frame


def training_rows(
    traj: Trajectories, points: Sequence[int], embeddings: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features, labels and question ids of every (question, decision point), stacked by k."""
    labels = enough_labels(traj, points)
    frames = [decision_features(traj, k, embeddings) for k in points]
    features = pd.concat(frames, ignore_index=True)
    y = np.concatenate([labels[:, i] for i in range(len(points))])
    groups = np.tile(traj.problem_ids, len(points))
    return features, y, groups


# --------------------------------------------------------------------------------------
# The pool table, from graded generations


def trajectory_pool(graded: pd.DataFrame, n_trajectories: int) -> pd.DataFrame:
    """One row per question and trajectory (:data:`POOL_COLUMNS` but ``split``) from the
    graded rows of a power method whose seeds 0..n_trajectories-1 are the trajectories.

    ``time_s`` of a trajectory is its share, by tokens decoded, of the decoding time of its
    shard and seed (chains run together, so a chain's own time is not observable).
    ``acceptance_rate`` is 0 for a chain that proposed no move.
    """
    missing = sorted({"mean_token_prob", "extracted", "compliant"} - set(graded.columns))
    if missing:
        raise UserError(
            f"the graded pool lacks columns {missing}: it was made by an older version; "
            "regenerate it"
        )
    rows = graded[graded["seed"].between(0, n_trajectories - 1)].copy()
    if rows.empty:
        raise UserError(f"the pool has none of seeds 0..{n_trajectories - 1}")
    per_seed = rows.groupby(["seed", "shard"])["tokens_decoded"].transform("sum")
    share = rows["tokens_decoded"] / per_seed.where(per_seed > 0, 1)
    rows["time_s"] = rows["shard_decode_time_s"] * share
    rows["trajectory"] = rows["seed"].astype(int)
    rows["answer"] = [vote_key(x) for x in rows["extracted"].where(rows["extracted"].notna(), None)]
    rows["acceptance_rate"] = rows["acceptance_rate"].astype(float).fillna(0.0)
    rows["correct"] = rows["correct"].fillna(False).astype(bool)
    rows["compliant"] = rows["compliant"].fillna(False).astype(bool)
    pool = rows[[c for c in POOL_COLUMNS if c != "split"]].reset_index(drop=True)
    for d in DIAGNOSTICS:
        pool[d] = pool[d].astype(float)
    Trajectories.from_pool(pool)  # every question has every trajectory, or a clear error
    return pool.sort_values(["problem_id", "trajectory"], kind="stable", ignore_index=True)


def split_questions(problem_ids: Sequence[str], train_share: float, seed: int) -> dict[str, str]:
    """Question id → "train" or "test": a seeded shuffle of the distinct ids, the first
    ``round(train_share · n)`` of it for training. Both parts must be non-empty."""
    ids = sorted({str(p) for p in problem_ids})
    n_train = round(train_share * len(ids))
    if not 0 < n_train < len(ids):
        raise UserError(
            f"a train share of {train_share} of {len(ids)} questions leaves one side empty"
        )
    order = numpy_rng(derive_seed(seed, "dps split")).permutation(len(ids))
    train = {ids[i] for i in order[:n_train]}
    return {pid: "train" if pid in train else "test" for pid in ids}
