"""Stage of ``rules/grade.smk``: one generation shard graded against the task's references."""

from __future__ import annotations

from typing import Any

import pandas as pd

from powersampling import io
from powersampling.errors import UserError
from powersampling.stages.common import Log, no_log, row_difficulty
from powersampling.stages.data import task_with_data


def grade_frame(generations: pd.DataFrame, problems: pd.DataFrame, task) -> pd.DataFrame:
    """Graded rows: the generation rows plus reference, extracted, correct, compliant, ..."""
    by_id = problems.set_index("problem_id", drop=False)
    missing = set(generations["problem_id"]) - set(by_id.index)
    if missing:
        raise UserError(
            f"generations refer to problems not in the task data: {sorted(missing)[:5]}"
        )
    rows = [by_id.loc[pid].to_dict() for pid in generations["problem_id"]]
    completions = [c if isinstance(c, str) else "" for c in generations["completion"]]
    graded = generations.copy()
    if hasattr(task, "grade_many_both"):  # graders with a second opinion (MATH, GSM8K)
        both = task.grade_many_both(completions, rows)
        grades = [grade for grade, _ in both]
        graded["correct_prm"] = [bool(prm) for _, prm in both]
    else:
        grades = task.grade_many(completions, rows)
        graded["correct_prm"] = None
    graded["reference"] = [str(r["answer"]) for r in rows]
    graded["extracted"] = [g.extracted for g in grades]
    graded["correct"] = [bool(g.correct) for g in grades]
    graded["compliant"] = [bool(g.compliant) for g in grades]
    graded["grader"] = [g.grader for g in grades]
    graded["error"] = [g.error for g in grades]
    graded["difficulty"] = pd.array([row_difficulty(r) for r in rows], dtype="Int32")
    graded["steps_correct"] = pd.array([g.steps_correct for g in grades], dtype="Int32")
    return graded


def grade(
    *,
    generations_path,
    data_path,
    task_name: str,
    task: dict[str, Any],
    task_seed: int,
    out_path,
    log: Log = no_log,
) -> pd.DataFrame:
    task_obj = task_with_data(task_name, task, seed=task_seed, data_path=data_path)
    graded = grade_frame(pd.read_parquet(generations_path), task_obj.load(), task_obj)
    io.write_parquet(graded, out_path, io.GRADED_SCHEMA)
    log(
        f"graded {len(graded)} rows: {graded['correct'].mean():.3f} correct, "
        f"{graded['extracted'].isna().sum()} extraction failures"
    )
    return graded
