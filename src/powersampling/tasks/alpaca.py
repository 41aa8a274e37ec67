"""AlpacaEval 2.0: 805 open-ended instructions, judged later by an LLM judge.

The prompt is the instruction itself, raw for every model as in the power-sampling paper's
runs; with the chat template (no published run used one) it is one user turn.

Nothing is graded here: :meth:`AlpacaTask.grade` returns a ``grader="none"`` verdict, and
:func:`export_alpaca_eval` writes generations in the JSON format ``alpaca_eval`` reads,
for a separately configured judge run (which needs an API key and is never started by
the library).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling.datasets import load_task_frame
from powersampling.errors import UserError
from powersampling.grading import Grade
from powersampling.io import write_text_atomic
from powersampling.tasks.base import Task
from powersampling.tasks.prompts import render_prompt

GRADER = "none"


class AlpacaTask(Task):
    kind = "alpaca"
    full_size = 805

    def load(self) -> pd.DataFrame:
        return load_task_frame(self)

    def prompt(
        self,
        row: dict[str, Any],
        tokenizer=None,
        chat_template: bool = False,
        instruct: bool = False,
    ) -> str:
        return render_prompt(row["question"], tokenizer, chat_template)

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        # correct=False only because the column is boolean: rows with grader "none" carry
        # no correctness and must be left out of accuracies.
        return Grade(None, False, bool(str(completion).strip()), GRADER, None)


def export_alpaca_eval(
    generations_df: pd.DataFrame,
    generator_name: str,
    path: str | os.PathLike,
    problems: pd.DataFrame | None = None,
) -> int:
    """Write one output per instruction as alpaca_eval's JSON list; returns the count.

    Records are ``{instruction, output, generator, dataset}``. Instructions come from
    ``problems`` (the task frame) when given, else from the generations' ``question`` or
    ``instruction`` column. With several samples per problem the first by (seed, chain)
    is kept, since alpaca_eval scores one output per instruction.
    """
    df = generations_df.copy()
    if problems is not None:
        keep = [c for c in ("problem_id", "question", "dataset") if c in problems.columns]
        df = df.drop(columns=[c for c in ("question", "dataset") if c in df.columns])
        df = df.merge(problems[keep], on="problem_id", how="left", validate="many_to_one")
    if "question" not in df.columns and "instruction" in df.columns:
        df = df.rename(columns={"instruction": "question"})
    missing = [c for c in ("problem_id", "question", "completion") if c not in df.columns]
    if missing or df["question"].isna().any():
        raise UserError(
            f"alpaca export needs problem_id, instruction text and completion; missing {missing}"
            " or unmatched problem ids (pass the task frame as problems=)"
        )
    order = [c for c in ("seed", "chain") if c in df.columns]
    if order:
        df = df.sort_values(order, kind="stable")
    df = df.drop_duplicates("problem_id", keep="first")
    records = [
        {
            "instruction": row["question"],
            "output": row["completion"],
            "generator": generator_name,
            "dataset": row.get("dataset") if isinstance(row.get("dataset"), str) else "unknown",
        }
        for row in df.to_dict("records")
    ]
    write_text_atomic(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return len(records)


def judge_command_available() -> bool:
    """Whether the ``alpaca_eval`` command line tool is installed (nothing is run)."""
    return shutil.which("alpaca_eval") is not None


def run_alpaca_eval_judge(
    outputs_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    annotator: str,
    api_key_env: str,
    runner=subprocess.run,
) -> Path:
    """Judge exported outputs with alpaca_eval's command line tool; returns its leaderboard.

    The judge is a paid API: it needs the ``alpaca_eval`` tool and a key in the environment
    variable ``api_key_env``. Either missing stops with a message saying what to do.
    """
    if not os.environ.get(api_key_env):
        raise UserError(
            f"the AlpacaEval judge needs an API key in ${api_key_env}; export it, "
            "or remove the 'alpaca_eval_judge' section from the config"
        )
    if not judge_command_available():
        raise UserError("the AlpacaEval judge needs the alpaca_eval tool: pip install alpaca-eval")
    out_dir = Path(out_dir)
    command = [
        "alpaca_eval",
        "evaluate",
        "--model_outputs",
        str(outputs_path),
        "--annotators_config",
        annotator,
        "--output_path",
        str(out_dir),
    ]
    result = runner(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"alpaca_eval failed ({result.returncode}): {result.stderr[-2000:]}")
    leaderboard = out_dir / "leaderboard.csv"
    if not leaderboard.is_file():
        raise UserError(f"alpaca_eval wrote no leaderboard in {out_dir}")
    return leaderboard
