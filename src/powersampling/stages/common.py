"""What several stage modules share: the type of a job's log, the silent log of a stage run
outside the workflow, and a problem row's difficulty."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

Log = Callable[[str], None]


def no_log(message: str) -> None:
    pass


def row_difficulty(row: dict[str, Any]) -> int | None:
    """A problem row's difficulty, None where the task has none."""
    value = row.get("difficulty")
    return None if value is None or pd.isna(value) else int(value)
