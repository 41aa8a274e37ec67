"""The verdict every grader returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion."""

    extracted: str | None  # the answer found in the completion (None: extraction failed)
    correct: bool
    compliant: bool  # the completion is in the format the prompt asked for
    grader: str  # which grader produced the verdict
    error: str | None = None  # why extraction or grading failed, if it did
    # Worked answers: how many steps of the reference chain the completion gets right, in
    # order from the first (None for answers that are not graded step by step).
    steps_correct: int | None = None
