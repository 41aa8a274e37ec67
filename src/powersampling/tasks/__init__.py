"""Benchmarks behind one interface: load → prompt → grade.

A task turns its source (generated problems, a local file, a downloaded dataset) into a
frame with one row per problem, builds the prompt a model sees for a row, and grades a
completion against that row. The workflow only ever talks to :class:`Task`.

Layout: :mod:`~powersampling.tasks.base` holds :class:`Task`,
:mod:`~powersampling.tasks.prompts` the prompt rendering the tasks share and
:func:`~powersampling.tasks.prompts.uses_chat_template` (which tasks of a model get its chat
template), and one module per benchmark holds its task class and prompt. The graders live
in :mod:`powersampling.grading`, which knows nothing about tasks.
"""

from __future__ import annotations

import importlib
from typing import Any

from powersampling.errors import UserError
from powersampling.grading import Grade
from powersampling.tasks.base import Task

__all__ = ["Grade", "Task", "get_task", "task_kinds"]

# kind → "module:Class"; a task's module (and its grader) is imported only when asked for.
_REGISTRY: dict[str, str] = {
    "alpaca": "powersampling.tasks.alpaca:AlpacaTask",
    "gpqa": "powersampling.tasks.gpqa:GPQATask",
    "gsm8k": "powersampling.tasks.gsm8k:GSM8KTask",
    "humaneval": "powersampling.tasks.humaneval:HumanEvalTask",
    "math500": "powersampling.tasks.math500:Math500Task",
    "pairs": "powersampling.tasks.pairs:PairsTask",
    "synthetic": "powersampling.tasks.synthetic:SyntheticTask",
}


def task_kinds() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, config: dict[str, Any], seed: int = 0) -> Task:
    """Build the task called ``name`` from its config section (``kind`` selects the class)."""
    kind = config.get("kind")
    if kind not in _REGISTRY:
        raise UserError(f"tasks.{name}.kind: unknown kind {kind!r}; known: {sorted(_REGISTRY)}")
    module_name, class_name = _REGISTRY[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(name, config, seed=seed)
