"""GPQA Diamond: 198 four-way multiple-choice science questions.

The options are shuffled per problem by a seeded RNG (``derive_seed(seed, problem_id)``),
so a prompt never depends on row order, and the row records the correct letter.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from powersampling.datasets import load_task_frame
from powersampling.grading import Grade, grade_choice
from powersampling.grading.choice import LETTERS
from powersampling.seeding import derive_seed, numpy_rng
from powersampling.tasks.base import Task
from powersampling.tasks.prompts import render_prompt

GPQA_PROMPT = (
    "{question}\n\n"
    "A) {A}\nB) {B}\nC) {C}\nD) {D}\n\n"
    "Think step by step, then give the letter of your final answer (A, B, C or D) "
    "within \\boxed{{}} on the last line."
)


def shuffle_options(
    correct: str, incorrect: list[str], seed: int, problem_id: str
) -> tuple[list[str], str]:
    """The four options in a per-problem seeded order, and the letter of the correct one."""
    options = [correct, *incorrect]
    order = numpy_rng(derive_seed(seed, "gpqa-options", problem_id)).permutation(len(options))
    shuffled = [options[k] for k in order]
    return shuffled, LETTERS[int(list(order).index(0))]


class GPQATask(Task):
    """Config: ``source``, ``limit``, ``shard_size``, ``letter_fallback`` (default false:
    only a boxed letter counts)."""

    kind = "gpqa"
    full_size = 198

    def load(self) -> pd.DataFrame:
        df = load_task_frame(self)
        rows = []
        for row in df.to_dict("records"):
            wrong = [row["incorrect_1"], row["incorrect_2"], row["incorrect_3"]]
            options, letter = shuffle_options(row["answer"], wrong, self.seed, row["problem_id"])
            row["answer_text"] = row["answer"]
            row["answer"] = letter  # what the grader compares with
            row.update({f"option_{k}": text for k, text in zip(LETTERS, options, strict=True)})
            rows.append(row)
        return pd.DataFrame(rows)

    def prompt(self, row: dict[str, Any], tokenizer=None, chat_template: bool = False) -> str:
        options = {k: row[f"option_{k}"] for k in LETTERS}
        text = GPQA_PROMPT.format(question=row["question"], **options)
        return render_prompt(text, tokenizer, chat_template)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        fallback = bool(self.config.get("letter_fallback", False))
        return grade_choice(completion, row["answer"], letter_fallback=fallback)
