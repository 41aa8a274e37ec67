"""A job that runs a model over one shard of a task (generation, LogitLens, patching,
question embeddings): what it is given, what it reads before any weights, and its model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log
from powersampling.stages.data import task_with_data


@dataclass(frozen=True)
class ShardInputs:
    """What a shard job reads before loading weights (see :meth:`ShardJob.read_inputs`).

    ``rows`` are the shard's problems as dicts (what prompts and graders take), ``prompts``
    their prompts and ``prompt_ids`` the prompts' token ids.
    """

    task: Any
    problems: pd.DataFrame
    rows: list[dict[str, Any]]
    prompts: list[str]
    prompt_ids: list[list[int]]
    tokenizer: Any


@dataclass(frozen=True)
class ShardJob:
    """One model of the config run over rows ``rows`` (start, stop) of a task's data file.

    ``model`` and ``task`` are the config entries of ``model_name`` and ``task_name``;
    ``model_dir`` is the model's folder made by the workflow, or None when the entry's
    ``source`` is a local folder. ``shard`` is the shard's number, where the job is one of
    a task's shards (errors name it). ``threads`` is torch's thread count for the job.
    """

    data_path: str | Path
    model_name: str
    model: dict[str, Any]
    model_dir: str | None
    task_name: str
    task: dict[str, Any]
    task_seed: int
    rows: tuple[int, int]
    device: str
    threads: int
    shard: int | None = None

    @property
    def source(self) -> str:
        """The model's folder: read locally, never from the hub."""
        return str(self.model_dir or self.model["source"])

    @property
    def chat_template(self) -> bool:
        """Whether the task's prompts go through the model's chat template."""
        from powersampling.tasks.prompts import uses_chat_template

        return uses_chat_template(self.model.get("chat_template", False), self.task_name)

    @property
    def instruct(self) -> bool:
        return bool(self.model.get("instruct", False))

    def read_inputs(self) -> ShardInputs:
        """The task, the shard's problems, their prompts and token ids, and the model's
        tokenizer: everything the job reads before loading weights."""
        import torch

        from powersampling.generation import shard_prompts
        from powersampling.models import load_tokenizer

        torch.set_num_threads(self.threads)
        task = task_with_data(
            self.task_name, self.task, seed=self.task_seed, data_path=self.data_path
        )
        start, stop = self.rows
        problems = task.load().iloc[start:stop].reset_index(drop=True)
        if problems.empty:
            where = f"task {self.task_name}"
            if self.shard is not None:
                where = f"shard {self.shard} of {where}"
            raise UserError(f"{where} has no problems (rows {start}-{stop})")
        tokenizer = load_tokenizer(self.source, local_files_only=True)
        rows, prompts, prompt_ids = shard_prompts(
            task, problems, tokenizer, self.chat_template, self.instruct
        )
        return ShardInputs(task, problems, rows, prompts, prompt_ids, tokenizer)

    def load_model(self, tokenizer, log: Log = no_log):
        """The model and its tokenizer from the model's folder, truncated when the config
        entry is a truncation."""
        from powersampling.models import load_model

        lm, tokenizer = load_model(
            self.source,
            dtype=self.model.get("dtype", "auto"),
            device=self.device,
            local_files_only=True,
            tokenizer=tokenizer,
            quantization=self.model.get("quantization"),
        )
        truncation = self.model.get("truncation")
        if truncation:
            from powersampling.truncation import truncate_model

            truncate_model(lm, truncation["layers"], truncation["keep_last"], name=truncation["of"])
            log(f"kept blocks {lm.config.truncation['kept']} of {truncation['of']}")
        return lm, tokenizer
