"""The synthetic task: generated arithmetic and variable-binding problems, exact answers.

Config keys (all optional except ``limit``):

- ``limit``: how many problems.
- ``shard_size``: problems per generation job (read by the workflow).
- ``generator``: ``{kinds, num_range, steps}``, the difficulty; defaults are the toy
  model's training distribution.
- ``instruction``: text appended to the question in chat mode (for instruction-tuned
  models, e.g. "Answer with a single integer."); empty by default, so that the toy
  model's chat template gives exactly the prompt it was trained on.

Problems come from the task's seed, so the same config gives the same problems.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from powersampling.errors import UserError
from powersampling.grading import Grade, grade_integer
from powersampling.tasks.base import Task
from powersampling.toy.problems import DEFAULT_GENERATOR, format_prompt, generate_problems


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

    def load(self) -> pd.DataFrame:
        """The problems written by the workflow's data rule if given, else generated afresh."""
        if self.config.get("data_path"):
            return pd.read_parquet(self.config["data_path"]).head(self.size)
        return generate_problems(self.size, seed=self.seed, **self.generator)

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        if not chat_template:
            return format_prompt(row["question"])
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(f"tasks.{self.name}: chat_template is on but the tokenizer has none")
        instruction = self.config.get("instruction") or ""
        content = f"{row['question']}\n{instruction}" if instruction else row["question"]
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        return grade_integer(completion, row["answer"])
