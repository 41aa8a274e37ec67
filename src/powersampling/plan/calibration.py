"""Calibrations: which (model, method) a config calibrates, on which slice, and what a
calibration file says.

A calibration runs the rows of one method's decoder (:meth:`Sampler.decoded_method`: a dps
method's trajectories are its pool's power sampling, so the pool method is calibrated), on
one model, over a short fixed slice of a real shard: the first ``calibration.problems``
problems of the first shard of the first task the pair runs on, one seed. Each problem of
the slice is repeated (with its own random stream) until the call holds as many prompts as
a generation job of a full shard decodes at once, so speeds are measured at the rows in
flight of a real job; on a GPU, where a step costs about the same for 2 rows as for 50,
that costs no more time than the slice alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from powersampling.errors import UserError
from powersampling.seeding import derive_seed

# One row per (model, method): what a calibration file holds.
CALIBRATION_COLUMNS = [
    "model",
    "method",
    "task",
    "sampler",
    "device",  # the device's name (a GPU model, or the CPU's)
    "device_type",  # cuda or cpu
    "threads",
    "batch",  # the memory plan's batch (rows)
    "requested_batch",
    "rows",  # rows in flight in the measured call
    "problems",  # distinct problems of the slice
    "prompts",  # prompts of the call (the slice's problems, repeated)
    "rows_per_prompt",
    "seed",
    "mean_prompt_tokens",
    "load_s",
    "prefill_tokens",
    "prefill_s",
    "prefill_tokens_per_s",
    "calls",  # times the call was run (the same seed: the same tokens)
    "sampler_s",  # the calls' median time in the sampler (their rows' shard_decode_time_s)
    "decode_s",  # sampler_s less the prefill of the call's prompts at prefill_tokens_per_s
    "tokens_decoded",
    "decode_tokens_per_s",
    "tokens_per_answer",  # mean tokens_decoded per answer
    "new_tokens_per_answer",  # mean answer length (n_new_tokens)
    "max_new_tokens",
    "peak_memory_bytes",
    "peak_memory_of",  # what was read: torch.cuda.max_memory_allocated or the peak RSS
]


@dataclass(frozen=True)
class CalibrationTarget:
    """One (model, method) to calibrate, on the first problems of ``task``'s first shard."""

    model: str
    method: str  # a method whose sampler decodes its own rows
    task: str

    @property
    def path(self) -> str:
        return calibration_path(self.task, self.model, self.method)


def calibration_path(
    task: str, model: str, method: str, directory: str | Path = "results/calibration"
) -> str:
    """Where the calibration of (model, method) on ``task`` is written."""
    return f"{directory}/{task}/{model}/{method}.parquet"


def decoder_method_name(config: dict[str, Any], method: str) -> str | None:
    """The config method whose rows ``method``'s rows are (its decoded method): itself, or
    the method entry a driving sampler decodes through (None when no entry is it)."""
    from powersampling.config import decoding_method

    decoded = decoding_method(config, method)
    if decoded is config["methods"][method]:
        return method
    return next((name for name, entry in config["methods"].items() if entry == decoded), None)


def calibration_targets(config: dict[str, Any]) -> list[CalibrationTarget]:
    """Every (model, decoded method) of a validated config's generation runs, once, with the
    first task it runs on, in run order."""
    from powersampling.config import run_seeds

    targets: dict[tuple[str, str], CalibrationTarget] = {}
    for task, model, method in run_seeds(config):
        decoded = decoder_method_name(config, method)
        if decoded is not None and (model, decoded) not in targets:
            targets[model, decoded] = CalibrationTarget(model, decoded, task)
    return list(targets.values())


def calibration_seed(config: dict[str, Any]) -> int:
    """The run seed of every calibration: none of the experiments' (its draws are its own)."""
    return derive_seed(config["seed"], "calibration") % 2**31


def slice_rows(config: dict[str, Any], target: CalibrationTarget) -> tuple[int, int]:
    """Rows [start, stop) of the task's data file that a calibration runs."""
    from powersampling.config import shard_rows

    start, stop = shard_rows(config, target.task, 0)
    return start, min(stop, start + config["calibration"]["problems"])


@dataclass(frozen=True)
class Calibration:
    """A calibration file's row, as the time plan reads it."""

    model: str
    method: str
    task: str
    device: str
    device_type: str
    batch: int
    rows: int
    mean_prompt_tokens: float
    load_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    tokens_per_answer: float
    new_tokens_per_answer: float
    path: str

    @classmethod
    def from_row(cls, row: dict[str, Any], path: str) -> Calibration:
        return cls(
            **{name: row[name] for name in cls.__dataclass_fields__ if name != "path"},
            path=path,
        )


def read_calibrations(
    config: dict[str, Any], directory: str | Path | None
) -> dict[tuple[str, str], Calibration]:
    """The calibrations of a config's targets found under ``directory``
    (task/model/method.parquet), by (model, method); targets without a file are left out."""
    if directory is None:
        return {}
    if not Path(directory).is_dir():
        raise UserError(f"no calibration folder at {directory}")
    found = {}
    for target in calibration_targets(config):
        path = calibration_path(target.task, target.model, target.method, directory)
        if not Path(path).exists():
            continue
        table = pd.read_parquet(path)
        missing = [c for c in CALIBRATION_COLUMNS if c not in table.columns]
        if len(table) != 1 or missing:
            raise UserError(
                f"{path} is not a calibration (one row with {missing or 'its'} columns)"
            )
        found[target.model, target.method] = Calibration.from_row(table.iloc[0].to_dict(), path)
    return found
