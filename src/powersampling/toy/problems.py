"""Synthetic reasoning problems with exact integer answers.

Two kinds, both with difficulty set by the range of the numbers and the number of steps:

- ``arithmetic``: an expression such as ``(15-12)*3+7``; ``steps`` is the number of
  operators (``+``, ``-``, ``*``), each adding one number on the left or the right.
- ``binding``: variable assignments such as ``q=3, x=2, k=q+x, m=k-1. m=?``; ``steps``
  is the number of derived variables, each one using the previous derived variable, so
  the answer needs every assignment to be followed in turn.

Generation is sequential from one seeded stream, so the first ``n`` problems of a call
with ``n + m`` problems are the ``n`` problems of a call with ``n`` (growing a task's
limit keeps the problems it already had, and their ids).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from powersampling.errors import UserError
from powersampling.seeding import numpy_rng

KINDS = ("arithmetic", "binding")
DEFAULT_KINDS = KINDS
DEFAULT_NUM_RANGE = (0, 9)
DEFAULT_STEPS = (1, 2)
# The difficulty the toy model is trained on and the synthetic task asks about by default.
DEFAULT_GENERATOR = {
    "kinds": list(DEFAULT_KINDS),
    "num_range": list(DEFAULT_NUM_RANGE),
    "steps": list(DEFAULT_STEPS),
}
# Every intermediate value stays within ±MAX_ABS, so answers stay short for a tiny model.
MAX_ABS = 999

_OPS = ("+", "-", "*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, None: 3}  # None: a bare number


def format_prompt(question: str) -> str:
    """The prompt the toy model is trained on; the answer's digits and EOS follow it."""
    return f"Q: {question}\nA: "


def generate_problems(
    n: int,
    seed: int,
    kinds: Sequence[str] = DEFAULT_KINDS,
    num_range: Sequence[int] = DEFAULT_NUM_RANGE,
    steps: Sequence[int] = DEFAULT_STEPS,
    max_abs: int = MAX_ABS,
) -> pd.DataFrame:
    """``n`` distinct problems, kinds taken in turn, drawn from a stream seeded by ``seed``.

    ``num_range`` and ``steps`` are inclusive ``(low, high)`` ranges. Columns:
    ``problem_id`` (``"{kind}-{i:05d}"``), ``question``, ``answer`` (an int as text),
    ``kind`` and ``steps``.
    """
    kinds, num_range, steps = _check_args(n, kinds, num_range, steps)
    rng = numpy_rng(seed)
    makers = {"arithmetic": _arithmetic, "binding": _binding}
    rows, seen = [], set()
    # Small ranges may hold fewer than n distinct problems; give up after many repeats.
    max_tries = 100 * n + 1000
    tries = 0
    while len(rows) < n:
        if tries >= max_tries:
            raise UserError(
                f"only {len(rows)} distinct problems found for n={n} with kinds={list(kinds)}, "
                f"num_range={list(num_range)}, steps={list(steps)}; widen the ranges or lower n"
            )
        tries += 1
        i = len(rows)
        kind = kinds[i % len(kinds)]
        n_steps = int(rng.integers(steps[0], steps[1] + 1))
        made = makers[kind](rng, n_steps, num_range, max_abs)
        if made is None or made[0] in seen:
            continue
        question, answer = made
        seen.add(question)
        rows.append(
            {
                "problem_id": f"{kind}-{i:05d}",
                "question": question,
                "answer": str(answer),
                "kind": kind,
                "steps": n_steps,
            }
        )
    df = pd.DataFrame(rows, columns=["problem_id", "question", "answer", "kind", "steps"])
    return df.astype(
        {"problem_id": str, "question": str, "answer": str, "kind": str, "steps": "int64"}
    )


def _check_args(n, kinds, num_range, steps):
    if int(n) != n or n < 0:
        raise UserError(f"number of problems must be a non-negative integer, got {n!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise UserError(f"problem kinds must be among {list(KINDS)}, got {list(kinds)}")
    num_range = _int_range("num_range", num_range, low=0)
    steps = _int_range("steps", steps, low=1)
    return kinds, num_range, steps


def _int_range(name: str, value, low: int) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be two integers [low, high], got {value!r}") from None
    if not low <= lo <= hi:
        raise UserError(f"{name} must satisfy {low} <= low <= high, got {[lo, hi]}")
    return lo, hi


def _number(rng: np.random.Generator, num_range: tuple[int, int]) -> int:
    return int(rng.integers(num_range[0], num_range[1] + 1))


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _arithmetic(rng, n_steps, num_range, max_abs):
    """Grow an expression one operator at a time; None when a value leaves ±max_abs."""
    value = _number(rng, num_range)
    text, top_op = str(value), None
    for _ in range(n_steps):
        op = _OPS[int(rng.integers(len(_OPS)))]
        b = _number(rng, num_range)
        if rng.random() < 0.5:  # expr op b: left-associative, so equal precedence is safe
            left = f"({text})" if _PRECEDENCE[top_op] < _PRECEDENCE[op] else text
            text, value = f"{left}{op}{b}", _apply(value, op, b)
        else:  # b op expr: the right operand needs brackets unless it binds tighter
            right = f"({text})" if _PRECEDENCE[top_op] <= _PRECEDENCE[op] else text
            text, value = f"{b}{op}{right}", _apply(b, op, value)
        top_op = op
        if abs(value) > max_abs:
            return None
    return text, value


def _binding(rng, n_steps, num_range, max_abs):
    """Two given variables, then a chain of ``n_steps`` derived ones; ask for the last."""
    names = [str(c) for c in rng.choice(list(string.ascii_lowercase), n_steps + 2, replace=False)]
    values = {names[0]: _number(rng, num_range), names[1]: _number(rng, num_range)}
    parts = [f"{names[0]}={values[names[0]]}", f"{names[1]}={values[names[1]]}"]
    for k in range(2, n_steps + 2):
        prev = names[k - 1]  # the chain: each step uses the previous variable
        op = ("+", "-")[int(rng.integers(2))]
        if rng.random() < 0.5:  # the other operand: an earlier variable or a number
            other = names[int(rng.integers(k - 1))]  # never prev itself
            other_value = values[other]
        else:
            other_value = _number(rng, num_range)
            other = str(other_value)
        values[names[k]] = _apply(values[prev], op, other_value)
        if abs(values[names[k]]) > max_abs:
            return None
        parts.append(f"{names[k]}={prev}{op}{other}")
    last = names[-1]
    return f"{', '.join(parts)}. {last}=?", values[last]
