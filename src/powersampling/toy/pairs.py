"""Clean/corrupted question pairs for activation patching, made from toy problems.

A pair is a toy problem (the clean question) and the same question with one number
changed (the corrupted one), each with its own answer, worked out by :func:`solve` from the
question text alone. A change that leaves the answer as it was (a distractor's number, or
a step whose result happens to stay the same) makes no pair: patching would have nothing
to restore. The rows follow the published pairs format: ``pair_id``, ``variant`` (clean |
corrupted), ``question``, ``answer``, plus the worked ``solution`` and the problem's
columns.
"""

from __future__ import annotations

import re

import pandas as pd

from powersampling.grading.synthetic import Step, format_solution
from powersampling.seeding import derive_seed, numpy_rng
from powersampling.toy.problems import DEFAULT_GENERATOR, generate_problems

VARIANTS = ("clean", "corrupted")
_NUMBER = re.compile(r"\d+")


def solve(question: str, kind: str, max_value: int | None = None) -> list[Step] | None:
    """The worked chain of a toy question, or None when a value leaves [0, max_value].

    Arithmetic reads left to right (its brackets only ever wrap everything before an
    operator); binding follows the asked variable back through the left operands of its
    assignments to a given value, then forward again.
    """
    chain = _solve_arithmetic(question) if kind == "arithmetic" else _solve_binding(question)
    if chain is None:
        return None
    if any(s.value < 0 or (max_value is not None and s.value > max_value) for s in chain):
        return None
    return chain


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _solve_arithmetic(question: str) -> list[Step] | None:
    tokens = re.findall(r"\d+|[-+*]", question)
    value, chain = int(tokens[0]), []
    for op, number in zip(tokens[1::2], tokens[2::2], strict=True):
        step = Step(value, op, int(number), _apply(value, op, int(number)))
        chain.append(step)
        value = step.value
    return chain or None


def _solve_binding(question: str) -> list[Step] | None:
    statements, asked = question.rstrip("?").rstrip("=").split(". ")
    expressions = dict(s.split("=") for s in statements.split(", "))
    values: dict[str, int] = {}
    for name, expression in expressions.items():  # each uses only earlier names
        left, op, right = _split(expression)
        if op is None:
            values[name] = int(left)
        else:
            values[name] = _apply(_value(left, values), op, _value(right, values))
    chain, name = [], asked
    while True:
        left, op, right = _split(expressions[name])
        if op is None:
            break
        chain.append(Step(_value(left, values), op, _value(right, values), values[name]))
        name = left
    return chain[::-1] or None


def _split(expression: str) -> tuple[str, str | None, str | None]:
    match = re.fullmatch(r"(\w+)([-+*])(\w+)", expression)
    return (match[1], match[2], match[3]) if match else (expression, None, None)


def _value(operand: str, values: dict[str, int]) -> int:
    return int(operand) if operand.isdigit() else values[operand]


def make_pairs(
    n: int, seed: int, *, max_tries: int = 20, **generator
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Up to ``n`` pairs (``2n`` rows, clean then corrupted) and counts of what was dropped.

    Each pair changes one number of a fresh problem (drawn with ``generator``, the synthetic
    task's settings) to another number of the question's range; ``max_tries`` changes are
    tried per problem. Dropped, and counted: changes whose answer equals the clean one
    (``same_answer``) and changes that take a step out of [0, max_value] (``out_of_range``).
    """
    settings = {**DEFAULT_GENERATOR, **generator}
    low, high = settings["num_range"]
    problems = generate_problems(n, seed=derive_seed(seed, "pair-problems"), **settings)
    rng = numpy_rng(derive_seed(seed, "pair-corruptions"))
    dropped = {"same_answer": 0, "out_of_range": 0, "no_change_found": 0}
    rows = []
    for problem in problems.itertuples(index=False):
        numbers = list(_NUMBER.finditer(problem.question))
        for _ in range(max_tries):
            spot = numbers[int(rng.integers(len(numbers)))]
            new = int(rng.integers(low, high + 1))
            if new == int(spot[0]):
                continue
            corrupted = problem.question[: spot.start()] + str(new) + problem.question[spot.end() :]
            chain = solve(corrupted, problem.kind, settings["max_value"])
            if chain is None:
                dropped["out_of_range"] += 1
                continue
            if str(chain[-1].value) == problem.answer:
                dropped["same_answer"] += 1
                continue
            break
        else:
            dropped["no_change_found"] += 1
            continue
        pair_id = f"pair-{problem.problem_id}"
        common = {"kind": problem.kind, "steps": problem.steps, "difficulty": problem.difficulty}
        rows.append(
            {"pair_id": pair_id, "variant": "clean", "question": problem.question,
             "answer": problem.answer, "solution": problem.solution, **common}
        )  # fmt: skip
        rows.append(
            {"pair_id": pair_id, "variant": "corrupted", "question": corrupted,
             "answer": str(chain[-1].value), "solution": format_solution(chain, chain[-1].value),
             **common}
        )  # fmt: skip
    return pd.DataFrame(rows), dropped
