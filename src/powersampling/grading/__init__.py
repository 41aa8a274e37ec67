"""Graders: answer extraction and equivalence checks, one verb per answer type.

Every grader returns a :class:`Grade`. The package stands alone: it imports nothing from
the rest of ``powersampling`` (tasks call the graders, never the other way round), and
importing it is cheap (the maths parsers load on first use).

- :func:`grade_worked`: a worked answer (steps, then ``#`` and the final answer) against
  the reference chain (synthetic task); :func:`grade_integer`: the last number in the text
  against an integer (the synthetic task's instruction-style prompt).
- :func:`grade_math`: the last ``\\boxed{}`` against a MATH answer, by math-verify;
  :func:`grade_math_both` adds the PRM800K-style verdict, :func:`grade_math_many` grades
  a batch in worker processes with hard timeouts.
- :func:`grade_choice`: the boxed option letter A-D (multiple choice).
- :func:`grade_code`: a HumanEval completion run against its tests in a sandbox;
  :func:`grade_code_many` runs several sandboxes at once.
"""

from powersampling.grading.choice import grade_choice
from powersampling.grading.code import grade_code, grade_code_many
from powersampling.grading.math import grade_math, grade_math_both, grade_math_many
from powersampling.grading.synthetic import grade_integer, grade_worked
from powersampling.grading.verdict import Grade

__all__ = [
    "Grade",
    "grade_choice",
    "grade_code",
    "grade_code_many",
    "grade_integer",
    "grade_math",
    "grade_math_both",
    "grade_math_many",
    "grade_worked",
]
