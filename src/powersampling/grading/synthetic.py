"""Exact-integer grading for the synthetic problems.

The extracted answer is the last number in the completion; it is correct when it is an
integer equal to the reference. The completion is compliant when, stripped, it is that
integer and nothing else (what the toy model is trained to write).
"""

from __future__ import annotations

import math
import re

from powersampling.grading.verdict import Grade

GRADER = "exact-integer"
# A number, with a minus sign only where it cannot be a binary minus ("3-5" is 3 and 5),
# and an optional decimal part so that "2.5" is read as 2.5, never as the integer 5.
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?\d+(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d+")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
