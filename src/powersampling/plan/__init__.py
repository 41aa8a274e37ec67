"""The time plan: GPU-hours of a config's generation jobs before any of them is submitted.

Each sampler declares its cost model (:meth:`~powersampling.samplers.Sampler.expected_tokens`:
tokens decoded per answer); the memory plan (:mod:`powersampling.memory`) gives each job's
batch; a device's speeds are assumed (:mod:`powersampling.plan.hardware`) until rule
``calibrate`` measures them (:mod:`powersampling.plan.calibration`). :func:`time_plan` turns
these into every job's predicted time (:mod:`powersampling.plan.timing`), the rules ask it
for each job's Slurm runtime, and ``python -m powersampling.plan --configfile F`` prints it
(:mod:`powersampling.plan.text`). :mod:`powersampling.plan.cost` compares the prediction
with the time and tokens the jobs spent.
"""

from powersampling.plan.calibration import (
    CALIBRATION_COLUMNS,
    Calibration,
    CalibrationTarget,
    calibration_path,
    calibration_seed,
    calibration_targets,
    decoder_method_name,
    read_calibrations,
    slice_rows,
)
from powersampling.plan.cli import main
from powersampling.plan.hardware import ASSUMED_CPU, ASSUMED_GPU, Device, ModelCost
from powersampling.plan.text import format_plan, packed_wall_s
from powersampling.plan.timing import (
    Assumptions,
    JobTime,
    MethodCost,
    TimePlan,
    runtime_minutes,
    time_plan,
)

__all__ = [
    "ASSUMED_CPU",
    "ASSUMED_GPU",
    "CALIBRATION_COLUMNS",
    "Assumptions",
    "Calibration",
    "CalibrationTarget",
    "Device",
    "JobTime",
    "MethodCost",
    "ModelCost",
    "TimePlan",
    "calibration_path",
    "calibration_seed",
    "calibration_targets",
    "decoder_method_name",
    "format_plan",
    "main",
    "packed_wall_s",
    "read_calibrations",
    "runtime_minutes",
    "slice_rows",
    "time_plan",
]
