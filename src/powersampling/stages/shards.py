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

    def row_budgets(self, prompts, decoded: dict[str, Any], log: Log = no_log) -> list:
        """Each row's budget of new tokens in the model's context, for the rows of
        ``prompts`` (a :class:`~powersampling.generation.ShardPrompts`) decoded by the method
        ``decoded``; the rows whose prompt leaves less than its budget are logged."""
        from powersampling.generation import row_budgets
        from powersampling.models import load_context_length
        from powersampling.samplers import method_params

        max_new_tokens = method_params(decoded).get("max_new_tokens")
        budgets = row_budgets(
            prompts.rows,
            prompts.ids,
            max_new_tokens,
            load_context_length(self.source, local_files_only=True),
            task_name=self.task_name,
            model_name=self.model_name,
        )
        n_cut = sum(b is not None and b < max_new_tokens for b in budgets)
        if n_cut:
            log(
                f"{n_cut} of {len(budgets)} prompts leave less than {max_new_tokens} new "
                f"tokens in {self.model_name}'s context: those rows get the budget that fits "
                "(token_budget)"
            )
        return budgets

    def memory_plan(self, decoded: dict[str, Any], prompt_ids, generation: dict[str, Any], name):
        """The memory plan of the method ``decoded`` over ``prompt_ids`` on this job's
        device (:func:`powersampling.memory.plan_generation`), named ``name``."""
        from powersampling.memory import plan_generation
        from powersampling.models import resolve_device

        device_gib = generation.get("device_memory_gib")
        return plan_generation(
            self.source,
            decoded,
            prompt_ids,
            generation.get("batch_size", 32),
            dtype=self.model.get("dtype", "auto"),
            device=resolve_device(self.device),
            device_bytes=None if device_gib is None else int(device_gib * 2**30),
            name=name,
            quantization=self.model.get("quantization"),
        )
