"""Grading for the synthetic problems: worked answers, and bare integers.

**Worked answers** (:func:`grade_worked`). The format, in full: one or more steps
``left op right=value`` (non-negative integers, ``op`` one of ``+ - *``) joined by
``"; "``, then ``"; #"`` and the final answer::

    3+4=7; 7-5=2; #2          (3+4-5)
    3+2=5; 5-1=4; #4          (q=3, x=2, k=q+x, m=k-1. m=?: the values substituted)

The final answer is read from the last ``#`` mark and is correct when it equals the
reference, whatever the steps say; the completion is compliant when, stripped, it is
exactly that format; ``steps_correct`` counts the reference's steps the completion
reproduces in order from the first (a step is right when its text is).

**Bare integers** (:func:`grade_integer`): the last number in the completion against the
reference; compliant when the stripped completion is that integer and nothing else (what
an instruction-style prompt asks for).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from powersampling.grading.verdict import Grade

GRADER = "exact-integer"
WORKED_GRADER = "worked-answer"
FINAL_MARK = "#"
# A number, with a minus sign only where it cannot be a binary minus ("3-5" is 3 and 5),
# and an optional decimal part so that "2.5" is read as 2.5, never as the integer 5.
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?\d+(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d+")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------ worked answers


@dataclass(frozen=True)
class Step:
    """One step of a worked answer: ``left op right=value``."""

    left: int
    op: str
    right: int
    value: int

    @property
    def text(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.value}"


@dataclass(frozen=True)
class WorkedAnswer:
    """A parsed answer: its well-formed steps in order, the marked final answer, and
    whether the whole text follows the format."""

    steps: tuple[Step, ...]
    final: int | None  # the number after the last "#" mark; None without one
    compliant: bool


_STEP = r"(\d+)([-+*])(\d+)=(\d+)"
_STEP_RE = re.compile(_STEP)
_FINAL_RE = re.compile(re.escape(FINAL_MARK) + r"(\d+)")
_WORKED_RE = re.compile(rf"{_STEP}(?:; {_STEP})*; {re.escape(FINAL_MARK)}\d+")


def format_solution(steps: Sequence[Step], answer: int) -> str:
    """The worked answer: the steps joined by ``"; "``, then ``"; #answer"``."""
    return "; ".join([*(s.text for s in steps), f"{FINAL_MARK}{answer}"])


def parse_solution(text: str) -> WorkedAnswer:
    """Read a worked answer: every well-formed step in order, the final answer from the
    last ``#`` mark, and compliance (the stripped text is exactly steps and a mark)."""
    steps = tuple(Step(int(a), op, int(b), int(v)) for a, op, b, v in _STEP_RE.findall(text))
    finals = _FINAL_RE.findall(text)
    final = int(finals[-1]) if finals else None
    return WorkedAnswer(steps, final, _WORKED_RE.fullmatch(text.strip()) is not None)


def steps_correct(answer: WorkedAnswer, reference: WorkedAnswer) -> int:
    """How many of the reference's steps the answer reproduces, in order from the first
    (the length of the answer's correct prefix of the chain)."""
    count = 0
    for got, want in zip(answer.steps, reference.steps, strict=False):
        if got != want:
            break
        count += 1
    return count


def grade_worked(completion: str | None, solution: str) -> Grade:
    """Grade a worked answer against the reference worked answer ``solution``."""
    reference = parse_solution(str(solution))
    if reference.final is None or not reference.compliant:
        return Grade(None, False, False, WORKED_GRADER, error=f"bad reference {solution!r}")
    if _missing(completion) or not isinstance(completion, str):
        return Grade(None, False, False, WORKED_GRADER, error="missing completion", steps_correct=0)
    answer = parse_solution(completion)
    n_right = steps_correct(answer, reference)
    if answer.final is None:
        return Grade(
            None,
            False,
            answer.compliant,
            WORKED_GRADER,
            error="no marked final answer",
            steps_correct=n_right,
        )
    return Grade(
        str(answer.final),
        answer.final == reference.final,
        answer.compliant,
        WORKED_GRADER,
        steps_correct=n_right,
    )


# -------------------------------------------------------------------------- bare integers


def grade_integer(completion: str | None, answer: str) -> Grade:
    """Grade ``completion`` against the integer ``answer`` (given as text)."""
    if _missing(completion) or not isinstance(completion, str):
        return Grade(None, False, False, GRADER, error="missing completion")
    try:
        reference = int(str(answer).strip())
    except ValueError:
        return Grade(None, False, False, GRADER, error=f"reference {answer!r} is not an integer")

    numbers = _NUMBER.findall(completion)
    compliant = _INTEGER.fullmatch(completion.strip()) is not None
    if not numbers:
        return Grade(None, False, compliant, GRADER, error="no integer in completion")
    last = numbers[-1]
    if "." in last:
        whole, fraction = last.split(".")
        if set(fraction) != {"0"}:  # 2.5 is not an integer; 2.0 is
            return Grade(last, False, compliant, GRADER)
        last = whole
    value = int(last)
    return Grade(str(value), value == reference, compliant, GRADER)
