"""What the jobs that run a model over one shard of a task share: reading the shard's
problems, prompts and tokenizer before any weights, then loading the model."""

from __future__ import annotations

from typing import Any

from powersampling.errors import UserError
from powersampling.stages.common import Log
from powersampling.stages.data import task_with_data


def shard_inputs(
    model, model_dir, task_name, task, task_seed, data_path, rows, threads, shard=None
):
    """What a generation, LogitLens or patching job reads before loading weights: the task,
    the shard's problems and rows, their prompts' token ids, the model folder (made by the
    workflow or named in the config: read locally, never from the hub) and its tokenizer."""
    import torch

    from powersampling.generation import shard_prompts
    from powersampling.models import load_tokenizer
    from powersampling.tasks.prompts import uses_chat_template

    torch.set_num_threads(threads)
    task_obj = task_with_data(task_name, task, seed=task_seed, data_path=data_path)
    problems = task_obj.load().iloc[rows[0] : rows[1]].reset_index(drop=True)
    if problems.empty:
        where = f"shard {shard} of task {task_name}" if shard is not None else f"task {task_name}"
        raise UserError(f"{where} has no problems (rows {rows[0]}-{rows[1]})")
    source = str(model_dir or model["source"])
    tokenizer = load_tokenizer(source, local_files_only=True)
    chat_template = uses_chat_template(model.get("chat_template", False), task_name)
    shard, _, prompt_ids = shard_prompts(
        task_obj, problems, tokenizer, chat_template, bool(model.get("instruct", False))
    )
    return task_obj, problems, shard, prompt_ids, source, tokenizer


def load_shard_model(model: dict[str, Any], source: str, device: str, tokenizer, log: Log):
    """The model of a config entry from its local folder, truncated when it is a truncation."""
    from powersampling.models import load_model

    lm, tokenizer = load_model(
        source,
        dtype=model.get("dtype", "auto"),
        device=device,
        local_files_only=True,
        tokenizer=tokenizer,
        quantization=model.get("quantization"),
    )
    truncation = model.get("truncation")
    if truncation:
        from powersampling.truncation import truncate_model

        truncate_model(lm, truncation["layers"], truncation["keep_last"], name=truncation["of"])
        log(f"kept blocks {lm.config.truncation['kept']} of {truncation['of']}")
    return lm, tokenizer
