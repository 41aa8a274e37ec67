"""The interface every benchmark implements: load → prompt → grade."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pandas as pd

from powersampling.errors import UserError
from powersampling.grading import Grade


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
    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        """The text the model is given for ``row``.

        ``chat_template``: wrap the text in the tokenizer's chat template (see
        :func:`~powersampling.tasks.prompts.uses_chat_template` for which tasks of a model
        get it). ``instruct``: the model is instruction-tuned; benchmarks whose published
        setup words the raw prompt differently for such models (HumanEval) use that wording,
        the others ignore it.
        """

    @abstractmethod
    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        """Grade one completion of ``row``."""

    def grade_many(self, completions: list[str], rows: list[dict[str, Any]]) -> list[Grade]:
        """Grade many completions; tasks with slow graders override this to use workers."""
        return [self.grade(c, r) for c, r in zip(completions, rows, strict=True)]
