"""Stages of ``rules/data.smk``: a task's problems as one Parquet file, generated or
downloaded, and the task that reads them back from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log
from powersampling.tasks import get_task


def synthetic_data(task_name: str, task: dict[str, Any], *, seed: int, out_path) -> pd.DataFrame:
    """Load (or generate) a task's problems and write them as one Parquet file."""
    task_obj = get_task(task_name, task, seed=seed)
    problems = task_obj.load()
    expected = task_obj.size
    if len(problems) == 0:
        raise UserError(f"task {task_name} has no problems")
    if len(problems) < expected:
        raise UserError(
            f"task {task_name} has {len(problems)} problems but the config asks for {expected}; "
            f"lower tasks.{task_name}.limit"
        )
    problems = problems.iloc[:expected].reset_index(drop=True)
    if problems["problem_id"].duplicated().any():
        raise UserError(f"task {task_name}: problem ids are not unique")
    io.write_parquet(problems, out_path)
    return problems


def download_dataset(
    task_name: str, task: dict[str, Any], *, seed: int, out_path, log: Log = no_log
) -> pd.DataFrame:
    """Download a benchmark (or read the local file in ``source``) into one Parquet file.

    A checksum file (``data/{task}.meta.json``) is written beside it. The file keeps every
    problem of the benchmark; shards read the first ``limit`` rows.
    """
    from powersampling.datasets import HUB_FILES, fetch_dataset

    task_obj = get_task(task_name, task, seed=seed)
    source = task.get("source") or HUB_FILES[task_obj.kind][0]
    log(f"fetching {task_obj.kind} from {source}")
    meta = fetch_dataset(task_obj.kind, source, out_path)
    if meta["rows"] < task_obj.size:
        Path(out_path).unlink(missing_ok=True)
        raise UserError(
            f"task {task_name}: {source} has {meta['rows']} problems but {task_obj.size} "
            f"are asked for; lower tasks.{task_name}.limit"
        )
    log(f"{meta['rows']} problems, sha256 {meta['source_sha256']}")
    return pd.read_parquet(out_path)


def task_with_data(task_name: str, task: dict[str, Any], *, seed: int, data_path):
    """The task, reading its problems from the workflow's data file."""
    return get_task(task_name, {**task, "data_path": str(data_path)}, seed=seed)
