"""Majority voting over trajectories, with one documented, deterministic tie rule.

A trajectory votes for its *answer key*: its extracted final answer after PRM800K-style
normalisation (:func:`~powersampling.grading.math.normalize_prm`: ``\\dfrac12``, ``\\frac{1}{2}``
and ``0.5`` are one answer; for integers and option letters it changes nothing). A trajectory
whose answer could not be extracted does not vote.

The vote: the answer with the most votes wins. Answers tied on votes are ordered by the
highest log p (base model, T=1) among their trajectories, then by the first trajectory that
gave them; the winner is represented by its trajectory of highest log p (the first of
equals). That representative's grade is the vote's grade.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from powersampling.grading.math import normalize_prm

NO_VOTE = -1  # :func:`majority` when no trajectory has an answer


def vote_key(extracted: str | None) -> str | None:
    """The answer a trajectory votes for (None: no vote)."""
    if extracted is None or (isinstance(extracted, float) and math.isnan(extracted)):
        return None
    key = normalize_prm(str(extracted))
    return key or None


def vote_counts(keys: Sequence[str | None]) -> dict[str, int]:
    """Votes per answer, in order of first appearance (trajectories without answer left out)."""
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


def majority(keys: Sequence[str | None], logps: Sequence[float]) -> int:
    """Index of the trajectory that represents the winning answer, or :data:`NO_VOTE`.

    ``keys[i]`` is trajectory i's answer key (None: no answer), ``logps[i]`` its log p.
    """
    best: dict[str, int] = {}  # answer -> its trajectory of highest log p (first of equals)
    counts = vote_counts(keys)
    for i, key in enumerate(keys):
        if key is not None and (key not in best or logps[i] > logps[best[key]]):
            best[key] = i
    if not best:
        return NO_VOTE
    first = {key: keys.index(key) for key in best}
    # Most votes, then the highest log p of the answer, then the answer seen first.
    winner = max(best, key=lambda a: (counts[a], _finite(logps[best[a]]), -first[a]))
    return best[winner]


def _finite(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else float(x)


def vote_correct(
    keys: Sequence[str | None], logps: Sequence[float], correct: Sequence[bool]
) -> bool:
    """Whether the majority answer of these trajectories is right (no vote: wrong)."""
    i = majority(keys, logps)
    return i != NO_VOTE and bool(correct[i])
