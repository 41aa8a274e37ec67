"""Benchmarks behind one interface: load → prompt → grade.

A task turns its source (generated problems, a local file, a downloaded dataset) into a
frame with one row per problem, builds the prompt a model sees for a row, and grades a
completion against that row. The workflow only ever talks to :class:`Task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from powersampling.errors import UserError


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion."""

    extracted: str | None  # the answer found in the completion (None: extraction failed)
    correct: bool
    compliant: bool  # the completion is in the format the prompt asked for
    grader: str  # which grader produced the verdict
    error: str | None = None  # why extraction or grading failed, if it did


class Task(ABC):
    """A benchmark. Subclasses set ``kind`` and implement load, prompt and grade."""

    kind: ClassVar[str]
    # Rows in the full benchmark; the workflow plans shards from it when no limit is set.
    full_size: ClassVar[int | None] = None

    def __init__(self, name: str, config: dict[str, Any], seed: int = 0):
        self.name = name
        self.config = config
        self.seed = seed

    @property
    def size(self) -> int:
        """How many problems the workflow will run (the config's limit, else the full size)."""
        limit = self.config.get("limit")
        if limit is not None:
            return int(limit) if self.full_size is None else min(int(limit), self.full_size)
        if self.full_size is None:
            raise UserError(f"tasks.{self.name}: set 'limit' (kind {self.kind} has no fixed size)")
        return self.full_size

    @abstractmethod
    def load(self) -> pd.DataFrame:
        """One row per problem: ``problem_id`` (str, stable), ``question``, ``answer`` (str)."""

    @abstractmethod
    def prompt(self, row: dict[str, Any], tokenizer=None, chat_template: bool = False) -> str:
        """The text the model is given for ``row``."""

    @abstractmethod
    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        """Grade one completion of ``row``."""

    def grade_many(self, completions: list[str], rows: list[dict[str, Any]]) -> list[Grade]:
        """Grade many completions; tasks with slow graders override this to use workers."""
        return [self.grade(c, r) for c, r in zip(completions, rows, strict=True)]


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.kind] = cls
    return cls


def task_kinds() -> list[str]:
    _import_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str, config: dict[str, Any], seed: int = 0) -> Task:
    """Build the task called ``name`` from its config section (``kind`` selects the class)."""
    _import_builtin_tasks()
    kind = config.get("kind")
    if kind not in _REGISTRY:
        raise UserError(f"tasks.{name}.kind: unknown kind {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind](name, config, seed=seed)


def _import_builtin_tasks() -> None:
    # Imported lazily so that importing this module stays cheap and cycle-free.
    from powersampling.tasks import (  # noqa: F401
        alpaca,
        gpqa,
        gsm8k,
        humaneval,
        math500,
        synthetic,
    )
