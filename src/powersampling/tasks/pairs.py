"""Clean/corrupted prompt pairs, the input of activation patching.

Config keys: as the synthetic task's (``limit`` is the number of pairs, and ``generator``
and ``prompt`` work the same), plus ``source``: a local JSON or JSONL file of pairs in the
published format, one record per prompt with ``pair_id``, ``variant`` (clean | corrupted),
``question`` and ``answer``. Without a source the pairs are made from toy problems
(:func:`powersampling.toy.pairs.make_pairs`, seeded by the task).

Rows: one per (pair, variant), clean first, ``problem_id`` ``"{pair_id}:{variant}"``; they
can run through any sampler like other problems. Pairs whose answers are equal are dropped
and counted here; pairs whose prompts tokenize to different lengths, by the patching job,
which has the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling.errors import UserError
from powersampling.grading import Grade, grade_integer, grade_worked
from powersampling.tasks.synthetic import SyntheticTask
from powersampling.toy.pairs import VARIANTS, make_pairs

PAIR_FIELDS = ("pair_id", "variant", "question", "answer")


class PairsTask(SyntheticTask):
    kind = "pairs"

    @property
    def size(self) -> int:
        """Rows: two per pair."""
        return 2 * super().size

    def load(self) -> pd.DataFrame:
        if self.config.get("data_path"):
            return pd.read_parquet(self.config["data_path"]).head(self.size)
        frame, _ = self.load_with_counts()
        return frame

    def load_with_counts(self) -> tuple[pd.DataFrame, dict[str, int]]:
        """The pairs' rows and how many candidate pairs were dropped, by reason."""
        n_pairs = self.size // 2
        if self.config.get("source"):
            frame, dropped = read_pairs(self.config["source"])
        else:
            frame, dropped = make_pairs(n_pairs, seed=self.seed, **self.generator)
        frame = frame[frame["pair_id"].isin(frame["pair_id"].drop_duplicates().head(n_pairs))]
        frame = frame.assign(problem_id=frame["pair_id"] + ":" + frame["variant"])
        return frame.reset_index(drop=True), dropped

    def grade(self, completion: str, row: dict[str, Any]) -> Grade:
        solution = row.get("solution")
        if self.prompt_style == "worked" and isinstance(solution, str):
            return grade_worked(completion, solution)
        return grade_integer(completion, row["answer"])


def read_pairs(path: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pairs from a JSON list or JSONL file in the published format; pairs whose answers
    are equal are dropped and counted, anything malformed is refused naming the file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read pairs from {path}: {err}") from err
    frame = pd.DataFrame(records)
    missing = [f for f in PAIR_FIELDS if f not in frame]
    if missing:
        raise UserError(f"{path}: pair records need {list(PAIR_FIELDS)}; missing {missing}")
    frame = frame.astype({"pair_id": str, "question": str, "answer": str})
    if not frame["variant"].isin(VARIANTS).all():
        raise UserError(f"{path}: variant must be one of {list(VARIANTS)}")
    counts = frame.groupby("pair_id")["variant"].agg(lambda v: tuple(sorted(v)))
    incomplete = counts[counts != ("clean", "corrupted")].index.tolist()
    if incomplete:
        raise UserError(f"{path}: pairs need one clean and one corrupted record: {incomplete[:5]}")
    answers = frame.pivot(index="pair_id", columns="variant", values="answer")
    same = answers.index[answers["clean"] == answers["corrupted"]]
    frame = frame[~frame["pair_id"].isin(same)]
    # The file's order of pairs, clean before corrupted within a pair.
    pair_order = {p: i for i, p in enumerate(dict.fromkeys(frame["pair_id"]))}
    frame = frame.assign(
        _pair=frame["pair_id"].map(pair_order), _variant=frame["variant"].map(VARIANTS.index)
    )
    frame = frame.sort_values(["_pair", "_variant"]).drop(columns=["_pair", "_variant"])
    return frame.reset_index(drop=True), {"same_answer": len(same)}
