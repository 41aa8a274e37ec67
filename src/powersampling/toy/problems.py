"""Synthetic reasoning problems with worked answers: checkable steps, then a marked result.

Two kinds:

- ``arithmetic``: an expression such as ``(5+2)*3-4``, built one operator at a time, each
  applied to everything before it, so its operators read left to right in the order they
  are evaluated. Its worked answer evaluates it in that order: ``5+2=7; 7*3=21; 21-4=17; #17``.
- ``binding``: assignments such as ``q=3, x=2, k=q+x, m=k-1. m=?``. The question's
  variable is the end of a chain of derived variables, each using the previous one; its
  worked answer follows the chain with the values substituted: ``3+2=5; 5-1=4; #4``.
  *Distractors* are assignments the answer does not need (``d=7`` or ``e=q+4``), placed
  among the others: the model has to find the chain rather than compute everything.

The worked-answer format (its parser and grader are in
:mod:`powersampling.grading.synthetic`): one or more steps ``left op right=value`` joined by
``"; "``, then ``"; #"`` and the final answer. Every number is a non-negative integer no
larger than ``max_value``; each step can be checked against the reference chain; the final
answer is read from the ``#`` mark only.

Difficulty is set by the number of steps, the range of the question's numbers, the largest
value a step may reach, the operators and the number of distractors; every row records its
``steps`` and ``distractors``, and its ``difficulty``, which is its number of steps (the
length of a correct chain).

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
from powersampling.grading.synthetic import Step, format_solution
from powersampling.seeding import derive_seed, numpy_rng

KINDS = ("arithmetic", "binding")
# The difficulty the toy model is trained on and the synthetic task asks about by default.
DEFAULT_GENERATOR = {
    "kinds": list(KINDS),
    "num_range": [1, 9],  # the numbers written in the question
    "steps": [2, 5],  # steps of a correct chain
    "ops": ["+", "-"],  # arithmetic's operators (binding uses + and -)
    "distractors": [0, 0],  # unneeded assignments (binding only)
    "max_value": 20,  # every intermediate value stays in [0, max_value]
}
PROBLEM_COLUMNS = {
    "problem_id": str,
    "question": str,
    "answer": str,  # the final answer, an integer as text
    "solution": str,  # the worked answer in the format above
    "kind": str,
    "steps": "int64",
    "distractors": "int64",
    "difficulty": "int64",
}

# The instruction-style prompt: an instruction, two solved examples, then the question.
INSTRUCTION = "Respond with only the final number."

_OPS = ("+", "-", "*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, None: 3}  # None: a bare number
_TRIES_PER_STEP = 20  # redraws of a step whose value leaves [0, max_value]


# ----------------------------------------------------------------------------- prompts


def format_prompt(question: str) -> str:
    """The worked-answer prompt the toy model is trained on; the worked answer follows."""
    return f"Q: {question}\nA: "


def format_instruction_prompt(question: str, examples: Sequence[tuple[str, str]]) -> str:
    """The instruction-style prompt: :data:`INSTRUCTION`, solved examples given as
    ``(question, final answer)``, then the question; only the number should follow."""
    shots = "".join(f"Q: {q}\nA: {a}\n" for q, a in examples)
    return f"{INSTRUCTION}\n{shots}Q: {question}\nA: "


def few_shot_examples(
    seed: int, exclude: Sequence[str] = (), n: int = 2, **generator
) -> list[tuple[str, str]]:
    """``n`` solved examples ``(question, answer)`` for instruction-style prompts, one of
    each kind in turn, at the low end of the difficulty (short prompts), none of them a
    question in ``exclude``."""
    generator = {**DEFAULT_GENERATOR, **generator}
    low = generator["steps"][0]
    pool = generate_problems(
        n + len(exclude) + 8,
        derive_seed(seed, "few-shot"),
        **{**generator, "steps": [low, low], "distractors": [0, 0]},
    )
    pool = pool[~pool["question"].isin(set(exclude))]
    return list(zip(pool["question"][:n], pool["answer"][:n], strict=True))


# -------------------------------------------------------------------------- generation


def generate_problems(
    n: int,
    seed: int,
    kinds: Sequence[str] = DEFAULT_GENERATOR["kinds"],
    num_range: Sequence[int] = DEFAULT_GENERATOR["num_range"],
    steps: Sequence[int] = DEFAULT_GENERATOR["steps"],
    distractors: Sequence[int] = DEFAULT_GENERATOR["distractors"],
    max_value: int = DEFAULT_GENERATOR["max_value"],
    ops: Sequence[str] = DEFAULT_GENERATOR["ops"],
) -> pd.DataFrame:
    """``n`` distinct problems, kinds taken in turn, drawn from a stream seeded by ``seed``.

    ``num_range``, ``steps`` and ``distractors`` are inclusive ``(low, high)`` ranges,
    drawn per problem (distractors apply to binding problems; arithmetic has none);
    ``ops`` are arithmetic's operators.
    Columns: :data:`PROBLEM_COLUMNS`; ``problem_id`` is ``"{kind}-{i:05d}"``.
    """
    kinds, num_range, steps, distractors, max_value = _check_args(
        n, kinds, num_range, steps, distractors, max_value
    )
    ops = tuple(ops)
    if not ops or not set(ops) <= set(_OPS):
        raise UserError(f"ops must be among {list(_OPS)}, got {list(ops)}")
    rng = numpy_rng(seed)
    rows, seen = [], set()
    # Small ranges may hold fewer than n distinct problems; give up after many repeats.
    max_tries = 100 * n + 1000
    tries = 0
    while len(rows) < n:
        if tries >= max_tries:
            raise UserError(
                f"only {len(rows)} distinct problems found for n={n} with kinds={list(kinds)}, "
                f"num_range={list(num_range)}, steps={list(steps)}, max_value={max_value}; "
                "widen the ranges or lower n"
            )
        tries += 1
        i = len(rows)
        kind = kinds[i % len(kinds)]
        n_steps = int(rng.integers(steps[0], steps[1] + 1))
        n_distractors = (
            int(rng.integers(distractors[0], distractors[1] + 1)) if kind == "binding" else 0
        )
        if kind == "arithmetic":
            made = _arithmetic(rng, n_steps, num_range, max_value, ops)
        else:
            made = _binding(rng, n_steps, n_distractors, num_range, max_value)
        if made is None or made[0] in seen:
            continue
        question, chain = made
        seen.add(question)
        answer = chain[-1].value
        solution = format_solution(chain, answer)
        rows.append(
            {
                "problem_id": f"{kind}-{i:05d}",
                "question": question,
                "answer": str(answer),
                "solution": solution,
                "kind": kind,
                "steps": n_steps,
                "distractors": n_distractors,
                "difficulty": n_steps,
            }
        )
    return pd.DataFrame(rows, columns=list(PROBLEM_COLUMNS)).astype(PROBLEM_COLUMNS)


def _check_args(n, kinds, num_range, steps, distractors, max_value):
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
    distractors = _int_range("distractors", distractors, low=0)
    if not isinstance(max_value, int) or max_value < num_range[1]:
        raise UserError(
            f"max_value must be an integer of at least num_range's high end "
            f"{num_range[1]}, got {max_value!r}"
        )
    return kinds, num_range, steps, distractors, max_value


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


def _arithmetic(rng, n_steps, num_range, max_value, ops):
    """Grow an expression one operator at a time, always on the right (``expr op b``), so
    that its operators read left to right in the order they are evaluated; brackets where
    precedence needs them. None when a step cannot stay in range."""
    value = _number(rng, num_range)
    text, top_op, chain = str(value), None, []
    for _ in range(n_steps):
        for _ in range(_TRIES_PER_STEP):
            op = ops[int(rng.integers(len(ops)))]
            b = _number(rng, num_range)
            if 0 <= _apply(value, op, b) <= max_value:
                break
        else:
            return None
        # Left-associative: only a looser-binding expression needs brackets.
        inner = f"({text})" if _PRECEDENCE[top_op] < _PRECEDENCE[op] else text
        text = f"{inner}{op}{b}"
        chain.append(Step(value, op, b, _apply(value, op, b)))
        value, top_op = chain[-1].value, op
    return text, chain


def _binding(rng, n_steps, n_distractors, num_range, max_value):
    """Two given variables, a chain of ``n_steps`` derived ones (ask for the last), and
    ``n_distractors`` assignments nothing needs, inserted at random places."""
    names = [
        str(c)
        for c in rng.choice(
            list(string.ascii_lowercase), n_steps + 2 + n_distractors, replace=False
        )
    ]
    chain_names, spare = names[: n_steps + 2], names[n_steps + 2 :]
    values = {chain_names[0]: _number(rng, num_range), chain_names[1]: _number(rng, num_range)}
    statements = [f"{n}={values[n]}" for n in chain_names[:2]]
    chain = []
    for k in range(2, n_steps + 2):
        prev = chain_names[k - 1]  # the chain: each step uses the previous variable
        for _ in range(_TRIES_PER_STEP):
            op = ("+", "-")[int(rng.integers(2))]
            if rng.random() < 0.5:  # the other operand: an earlier variable or a number
                other = chain_names[int(rng.integers(k - 1))]  # never prev itself
                other_value = values[other]
            else:
                other_value = _number(rng, num_range)
                other = str(other_value)
            value = _apply(values[prev], op, other_value)
            if 0 <= value <= max_value:
                break
        else:
            return None
        name = chain_names[k]
        values[name] = value
        statements.append(f"{name}={prev}{op}{other}")
        chain.append(Step(values[prev], op, other_value, value))
    for name in spare:
        position = int(rng.integers(len(statements) + 1))
        defined = [s.split("=")[0] for s in statements[:position]]
        if defined and rng.random() < 0.5:  # derived from a variable defined before it
            source = defined[int(rng.integers(len(defined)))]
            number = _number(rng, num_range)
            # Whichever of + and - stays in range (+ always does when number is small).
            op = ("+", "-")[int(rng.integers(2))]
            if not 0 <= _apply(values[source], op, number) <= max_value:
                op = "+" if op == "-" else "-"
            if not 0 <= _apply(values[source], op, number) <= max_value:
                return None
            values[name] = _apply(values[source], op, number)
            statement = f"{name}={source}{op}{number}"
        else:
            values[name] = _number(rng, num_range)
            statement = f"{name}={values[name]}"
        statements.insert(position, statement)
    return f"{', '.join(statements)}. {chain_names[-1]}=?", chain
