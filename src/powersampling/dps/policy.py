"""Stopping rules replayed on the pool, and the tables that compare them.

Every rule grows k on the same schedule (``k_start``, then ``k_step`` at a time, up to
``k_max``) and differs only in when it stops; the answer is the majority vote of the first k
trajectories. Replaying a rule on the pool is exact because trajectories are independent:
the first k of the pool are what a run that stopped at k would have drawn.

Rules (:func:`stops`), each checked at every decision point k < k_max:

- ``fixed_k{n}``: stop at k = n;
- ``dps_{controller}``: stop when 1 - p̂_enough(k) <= τ;
- ``esc``: Early-Stopping Self-Consistency: stop when the last ``window`` trajectories agree
  on one answer (all have the same, non-missing answer);
- ``ac``: Adaptive-Consistency's Beta rule: with a and b the votes of the two leading
  answers, stop when P(x > 1/2) >= ``threshold`` for x ~ Beta(a + 1, b + 1) (the probability
  that the leader is the majority);
- ``oracle``: stop at the smallest k that is enough (its vote is as correct as all k_max).

Costs of a question: tokens decoded and time of its first k trajectories, summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from powersampling.dps.trajectories import Trajectories, enough_labels, representatives
from powersampling.dps.votes import NO_VOTE, vote_counts
from powersampling.errors import UserError
from powersampling.stats import bootstrap_ci, paired_bootstrap_diff

REPLAY_COLUMNS = ["policy", "tau", "problem_id", "k", "answer", "correct", "tokens", "time_s"]


@dataclass(frozen=True)
class Schedule:
    """k_start trajectories, then k_step more at a time, up to k_max."""

    k_start: int = 2
    k_step: int = 2
    k_max: int = 8

    def __post_init__(self):
        if not 1 <= self.k_start <= self.k_max or self.k_step < 1:
            raise UserError(
                f"a DPS schedule needs 1 <= k_start <= k_max and k_step >= 1 (got {self})"
            )
        if (self.k_max - self.k_start) % self.k_step:
            raise UserError(
                f"k_max - k_start must be a multiple of k_step (got {self.k_start}, "
                f"{self.k_step}, {self.k_max})"
            )

    @classmethod
    def of(cls, study: dict) -> Schedule:
        """The schedule of a ``studies.dps`` config section."""
        return cls(study["k_start"], study["k_step"], study["k_max"])

    @property
    def points(self) -> list[int]:
        """The decision points: every k below k_max the schedule reaches."""
        return list(range(self.k_start, self.k_max, self.k_step))

    @property
    def ks(self) -> list[int]:
        """Every k the schedule reaches, k_max included."""
        return [*self.points, self.k_max]


# --------------------------------------------------------------------------------------
# Stopping rules: each returns, per decision point, which questions stop there ([n] bool).


def esc_stop(traj: Trajectories, k: int, window: int) -> np.ndarray:
    """The last ``window`` of the first k trajectories agree on one (non-missing) answer."""
    last = traj.keys[:, max(0, k - window) : k]
    return np.array([row[0] is not None and all(a == row[0] for a in row) for row in last])


def ac_probability(a: int, b: int) -> float:
    """P(x > 1/2) for x ~ Beta(a + 1, b + 1): a and b are the two leading vote counts."""
    from scipy.stats import beta

    return float(beta.sf(0.5, a + 1, b + 1))


def ac_stop(traj: Trajectories, k: int, threshold: float) -> np.ndarray:
    """Adaptive-Consistency's Beta rule on the first k trajectories."""
    out = []
    for keys in traj.keys[:, :k]:
        top = sorted(vote_counts(list(keys)).values(), reverse=True) + [0, 0]
        out.append(ac_probability(top[0], top[1]) >= threshold)
    return np.array(out, dtype=bool)


def stop_points(stop: np.ndarray, schedule: Schedule) -> np.ndarray:
    """k used per question from ``stop`` [n, decision points] (k_max where none stops)."""
    ks = np.array(schedule.points + [schedule.k_max])
    stop = np.concatenate([stop, np.ones((stop.shape[0], 1), dtype=bool)], axis=1)
    return ks[stop.argmax(axis=1)]


def outcomes(
    traj: Trajectories, k_used: np.ndarray, policy: str, tau: float = np.nan
) -> pd.DataFrame:
    """Per question: the k a rule used, its vote's answer and whether it is right, and the
    tokens and time of its k trajectories."""
    correct = np.zeros(len(k_used), dtype=bool)
    answer = np.full(len(k_used), None, dtype=object)
    for k in np.unique(k_used):
        rows = np.flatnonzero(k_used == k)
        seen = traj.rows(rows).first(int(k))
        rep = representatives(seen)
        voted = rep != NO_VOTE
        at = np.maximum(rep, 0)
        correct[rows] = voted & seen.correct[np.arange(len(rows)), at]
        answer[rows] = np.where(voted, seen.keys[np.arange(len(rows)), at], None)
    used = np.arange(traj.n_trajectories)[None, :] < k_used[:, None]  # [n, K]
    return pd.DataFrame(
        {
            "policy": policy,
            "tau": float(tau),
            "problem_id": traj.problem_ids.astype(str),
            "k": k_used.astype(int),
            "answer": answer,
            "correct": correct,
            "tokens": (traj.diagnostics["tokens_decoded"] * used).sum(axis=1),
            "time_s": (traj.time_s * used).sum(axis=1),
        }
    )


def baseline_replays(
    traj: Trajectories, schedule: Schedule, *, esc_window: int, ac_threshold: float
) -> pd.DataFrame:
    """Fixed k at every k of the schedule, ESC, Adaptive-Consistency and the oracle."""
    n, points = len(traj.problem_ids), schedule.points
    frames = []
    for k in schedule.ks:
        frames.append(outcomes(traj, np.full(n, k), f"fixed_k{k}"))
    rules = {
        "esc": np.stack([esc_stop(traj, k, esc_window) for k in points], axis=1),
        "ac": np.stack([ac_stop(traj, k, ac_threshold) for k in points], axis=1),
        "oracle": enough_labels(traj, points),
    }
    for name, stop in rules.items():
        stop = stop.reshape(n, len(points))
        frames.append(outcomes(traj, stop_points(stop, schedule), name))
    return pd.concat(frames, ignore_index=True)


def dps_k(p_enough: np.ndarray, tau: float, schedule: Schedule) -> np.ndarray:
    """k used per question by the DPS rule from p̂_enough [n, decision points]."""
    return stop_points(1.0 - p_enough <= tau, schedule)


def dps_replays(
    traj: Trajectories,
    p_enough: np.ndarray,
    taus,
    schedule: Schedule,
    controller: str,
) -> pd.DataFrame:
    """The DPS rule of one controller at every τ (``policy`` is ``dps_{controller}``)."""
    return pd.concat(
        [outcomes(traj, dps_k(p_enough, tau, schedule), f"dps_{controller}", tau) for tau in taus],
        ignore_index=True,
    )


def choose_tau(replays: pd.DataFrame, policy: str, reference: str) -> float:
    """The largest τ (fewest trajectories) whose accuracy reaches the reference rule's, on
    the questions of ``replays`` (the training questions, with out-of-fold p̂); the smallest
    τ when none does."""
    target = replays.loc[replays["policy"] == reference, "correct"].mean()
    rows = replays[replays["policy"] == policy]
    accuracy = rows.groupby("tau")["correct"].mean()
    if accuracy.empty:
        raise UserError(f"no replays of {policy}")
    good = accuracy[accuracy >= target - 1e-12]
    return float(good.index.max() if len(good) else accuracy.index.min())


# --------------------------------------------------------------------------------------
# Summaries


def summarize(
    replays: pd.DataFrame, reference: str, *, n_boot: int, level: float, seed: int
) -> pd.DataFrame:
    """Per (policy, τ): accuracy with a bootstrap CI over questions, mean k, tokens and time
    per question, and against ``reference`` (fixed k_max): token saving and the accuracy
    difference with a paired bootstrap CI."""
    ref = replays[replays["policy"] == reference].set_index("problem_id")
    if ref.empty:
        raise UserError(f"no replay of the reference rule {reference}")
    rows = []
    for (policy, tau), group in replays.groupby(["policy", "tau"], sort=False, dropna=False):
        acc, low, high = bootstrap_ci(
            group["correct"], group["problem_id"], n_boot=n_boot, level=level, seed=seed
        )
        paired = ref.loc[group["problem_id"]]
        diff, d_low, d_high = paired_bootstrap_diff(
            group["correct"].to_numpy(),
            paired["correct"].to_numpy(),
            group["problem_id"].to_numpy(),
            n_boot=n_boot,
            level=level,
            seed=seed,
        )
        tokens, ref_tokens = group["tokens"].mean(), paired["tokens"].mean()
        rows.append(
            {
                "policy": policy,
                "tau": tau,
                "n_questions": len(group),
                "accuracy": acc,
                "accuracy_low": low,
                "accuracy_high": high,
                "mean_k": group["k"].mean(),
                "tokens_per_question": tokens,
                "time_per_question_s": group["time_s"].mean(),
                "token_saving": 1.0 - tokens / ref_tokens if ref_tokens > 0 else np.nan,
                "accuracy_vs_reference": diff,
                "accuracy_vs_reference_low": d_low,
                "accuracy_vs_reference_high": d_high,
            }
        )
    return pd.DataFrame(rows)


def controller_quality(p_enough: np.ndarray, labels: np.ndarray, points: list[int], bins: int = 10):
    """ROC-AUC, Brier score and ECE per decision point and over all of them, and the
    calibration bins (equal width in p̂) over all: two frames."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    rows = []
    for k, p, y in [
        *[(k, p_enough[:, i], labels[:, i]) for i, k in enumerate(points)],
        ("all", p_enough.ravel(), labels.ravel()),
    ]:
        both = 0 < y.sum() < len(y)
        rows.append(
            {
                "k": str(k),
                "n": len(y),
                "enough_rate": float(y.mean()),
                "roc_auc": float(roc_auc_score(y, p)) if both else np.nan,
                "brier": float(brier_score_loss(y, p, labels=[False, True])),
                "ece": expected_calibration_error(p, y, bins),
            }
        )
    return pd.DataFrame(rows), calibration_bins(p_enough.ravel(), labels.ravel(), bins)


def calibration_bins(p: np.ndarray, y: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of p̂: their count, mean p̂ and observed rate (empty bins left out)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "bin": b,
                    "n": int(inside.sum()),
                    "mean_p_enough": float(p[inside].mean()),
                    "enough_rate": float(y[inside].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["bin", "n", "mean_p_enough", "enough_rate"])


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Σ over equal-width bins of (bin share) · |mean p̂ - observed rate|."""
    table = calibration_bins(np.asarray(p, float), np.asarray(y, float), bins)
    if table.empty:
        return np.nan
    gaps = (table["mean_p_enough"] - table["enough_rate"]).abs()
    return float((table["n"] * gaps).sum() / table["n"].sum())
