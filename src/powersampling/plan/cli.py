"""The command line of ``python -m powersampling.plan``: GPU-hours and wall time of a
config's generation jobs, before submitting anything."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from powersampling.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powersampling.plan",
        description="The time plan of a config's generation jobs: tokens each decodes (the "
        "samplers' cost models), GPU-hours per job and in total, wall time on N GPUs and each "
        "job's Slurm runtime; from model shapes and assumed speeds, or a calibration (rule "
        "calibrate). No weights, no GPU, no network.",
    )
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--schema", default="config/schema.yaml")
    parser.add_argument(
        "--calibration",
        default=None,
        help="a calibration folder (results/calibration): measured speeds and tokens",
    )
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the jobs share (default 1)")
    parser.add_argument(
        "--gpu-gib", type=float, default=None, help="device memory for the memory plan, GiB"
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        help="a typical answer's length (default: calibration.answer_tokens, else each "
        "method's max_new_tokens, an upper bound)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--jobs", action="store_true", help="also print every job")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")

    from transformers.utils import logging as hf_logging

    from powersampling.config import load_config
    from powersampling.plan.text import format_plan
    from powersampling.plan.timing import time_plan

    hf_logging.set_verbosity_error()  # config warnings are noise here
    try:
        config = load_config(args.configfile, args.schema)
        plan = time_plan(
            config,
            calibration_dir=args.calibration,
            gpu_gib=args.gpu_gib,
            answer_tokens=args.answer_tokens,
            prompt_tokens=args.prompt_tokens,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.configfile}: the time plan")
    print(format_plan(plan, args.gpus, every_job=args.jobs))
    refused = plan.over_cap()
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    return 1 if refused else 0
