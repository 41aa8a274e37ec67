"""GPQA Diamond: 198 four-way multiple-choice science questions.

The prompt is the power-sampling paper's query template, raw for every model in its runs:
an instruction to end with ``\\boxed{LETTER}``, the question, and the options lettered
``A)`` to ``D)``, one per line. The grader reads the letter from the last ``\\boxed{}``.

The published runs put the correct answer at a uniformly random position among the
shuffled wrong ones (a uniformly random order of the four), drawn from an unseeded stream.
Here the order is a uniformly random permutation drawn per problem from the task's seed
(``derive_seed(seed, "gpqa-options", problem_id)``): the same distribution, but
reproducible and independent of row order. The row records the correct letter.
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
    "Answer the following multiple choice question. The last line of your response should "
    "be of the following format: '\\boxed{{$LETTER}}' (without quotes) where LETTER is one "
    "of ABCD (ex. '\\boxed{{A}}'). Think step by step before answering.\n\n"
    "{question}\n\n"
    "A) {A}\nB) {B}\nC) {C}\nD) {D}"
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

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        options = {k: row[f"option_{k}"] for k in LETTERS}
        text = GPQA_PROMPT.format(question=row["question"], **options)
        return render_prompt(text, tokenizer, chat_template)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        fallback = bool(self.config.get("letter_fallback", False))
        return grade_choice(completion, row["answer"], letter_fallback=fallback)
