"""MATH-500: competition maths, graded by the last ``\\boxed{}`` answer.

The prompt is the power-sampling paper's, character for character: the problem between a
fixed opening and a chain-of-thought instruction. Its ``\\boxed{{}}`` keeps the doubled
braces the published runs showed the models (their code appends the instruction without
formatting it), so that results compare with the paper's. With the chat template the same
text is one user turn, as the paper's runs of Phi-3.5-mini-instruct had it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from powersampling.datasets import load_task_frame
from powersampling.grading import Grade, grade_math, grade_math_many
from powersampling.tasks.base import Task
from powersampling.tasks.prompts import render_prompt

MATH_OPENING = "Can you solve the following math problem? "
# Appended verbatim (never passed through str.format): the doubled braces are published text.
MATH_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{{}}."


def math_prompt_text(question: str) -> str:
    """The published MATH prompt for ``question``, before any chat template."""
    return MATH_OPENING + question + MATH_INSTRUCTION


class Math500Task(Task):
    """Config: ``source``, ``limit``, ``shard_size``; grading ``timeout_s`` (default 5)
    and ``workers`` (grading processes, default 2; 0 grades in the calling process).

    Batches are graded by :func:`grade_math_many`: each distinct (extracted answer,
    reference) pair once, the verdict given to every row that has it (seeds and methods
    often agree), with pathological answers refused before the timers are needed.
    """

    kind = "math500"
    full_size = 500

    def load(self) -> pd.DataFrame:
        return load_task_frame(self)

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        return render_prompt(math_prompt_text(row["question"]), tokenizer, chat_template)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        return grade_math(completion, row["answer"], timeout_s=self.config.get("timeout_s", 5))

    def grade_many_both(
        self, completions: list[str], rows: list[dict[str, Any]]
    ) -> list[tuple[Grade, bool]]:
        """(math-verify Grade, PRM800K-style verdict) per completion, graded in workers."""
        return grade_math_many(
            completions,
            [r["answer"] for r in rows],
            workers=int(self.config.get("workers", 2)),
            timeout_s=float(self.config.get("timeout_s", 5)),
        )

    def grade_many(self, completions: list[str], rows: list[dict[str, Any]]) -> list[Grade]:
        return [grade for grade, _ in self.grade_many_both(completions, rows)]
