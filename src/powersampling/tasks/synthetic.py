"""The synthetic task: generated arithmetic and variable-binding problems, exact answers.

Config keys (all optional except ``limit``):

- ``limit``: how many problems.
- ``shard_size``: problems per generation job (read by the workflow).
- ``generator``: ``{kinds, num_range, steps, distractors, max_value}``, the difficulty
  (see :mod:`powersampling.toy.problems`); defaults are the toy model's training
  distribution.
- ``prompt``: ``worked`` (default) asks for a worked answer, graded by its ``#``-marked
  final answer with compliance to the format and the number of right steps;
  ``instruction`` says "Respond with only the final number." and gives two solved
  examples, graded by the last number with compliance = the answer is only that number.
- ``instruction``: text appended to the question in chat mode (for instruction-tuned
  models, e.g. "Answer with a single integer."); empty by default, so that the toy
  model's chat template gives exactly the prompt it was trained on.

Problems come from the task's seed, so the same config gives the same problems; the
instruction-style prompt's examples too (none of them is one of the task's questions).
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd

from powersampling.errors import UserError
from powersampling.grading import Grade, grade_integer, grade_worked
from powersampling.tasks.base import Task
from powersampling.toy.problems import (
    DEFAULT_GENERATOR,
    INSTRUCTION,
    few_shot_examples,
    format_instruction_prompt,
    format_prompt,
    generate_problems,
)

PROMPTS = ("worked", "instruction")


class SyntheticTask(Task):
    kind = "synthetic"

    @property
    def generator(self) -> dict[str, Any]:
        """The generator settings: the config's, filled in from the defaults."""
        given = self.config.get("generator") or {}
        unknown = sorted(set(given) - set(DEFAULT_GENERATOR))
        if unknown:
            raise UserError(
                f"tasks.{self.name}.generator: unknown keys {unknown}; "
                f"known: {sorted(DEFAULT_GENERATOR)}"
            )
        return {**DEFAULT_GENERATOR, **given}

    @property
    def prompt_style(self) -> str:
        style = self.config.get("prompt", "worked")
        if style not in PROMPTS:
            raise UserError(
                f"tasks.{self.name}.prompt must be one of {list(PROMPTS)}, got {style!r}"
            )
        return style

    def load(self) -> pd.DataFrame:
        """The problems written by the workflow's data rule if given, else generated afresh."""
        if self.config.get("data_path"):
            problems = pd.read_parquet(self.config["data_path"]).head(self.size)
            if "solution" not in problems:
                raise UserError(
                    f"{self.config['data_path']} has no worked solutions (written by an older "
                    "version of this workflow); delete it and run again"
                )
            return problems
        return generate_problems(self.size, seed=self.seed, **self.generator)

    @functools.cached_property
    def examples(self) -> list[tuple[str, str]]:
        """The instruction-style prompt's two solved examples ``(question, answer)``."""
        return few_shot_examples(self.seed, exclude=list(self.load()["question"]), **self.generator)

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        style = self.prompt_style
        if not chat_template:
            if style == "instruction":
                return format_instruction_prompt(row["question"], self.examples)
            return format_prompt(row["question"])
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(f"tasks.{self.name}: chat_template is on but the tokenizer has none")
        instruction = self.config.get("instruction") or ""
        content = f"{row['question']}\n{instruction}" if instruction else row["question"]
        messages = [{"role": "user", "content": content}]
        if style == "instruction":  # the instruction, then the examples as earlier turns
            shots = [
                turn
                for question, answer in self.examples
                for turn in (
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                )
            ]
            messages = [{"role": "system", "content": INSTRUCTION}, *shots, *messages]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        if self.prompt_style == "instruction":
            return grade_integer(completion, row["answer"])
        return grade_worked(completion, row["solution"])
