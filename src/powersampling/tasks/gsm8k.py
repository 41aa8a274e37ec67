"""GSM8K (test split, 1319 problems): grade-school word problems, numeric answers.

Same prompt and grader as MATH-500; the reference is the number after ``####``.
"""

from __future__ import annotations

from powersampling.tasks.math500 import Math500Task


class GSM8KTask(Math500Task):
    kind = "gsm8k"
    full_size = 1319
