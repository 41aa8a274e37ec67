"""The command line of ``python -m powersampling.memory``: the batch each generation job of
a config can decode on a GPU of a given size."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from powersampling.errors import UserError
from powersampling.memory.resources import format_table, plan_config
from powersampling.memory.units import DEFAULT_PROMPT_TOKENS, GIB, gib


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powersampling.memory",
        description="The batch each generation job of a config can decode on a GPU of a "
        "given size (from published model shapes; no weights, no network).",
    )
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--schema", default="config/schema.yaml")
    parser.add_argument("--gpu-gib", type=float, required=True, help="device memory, GiB")
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=DEFAULT_PROMPT_TOKENS,
        help=f"assumed length of every prompt (default {DEFAULT_PROMPT_TOKENS})",
    )
    parser.add_argument(
        "--host-gib",
        type=float,
        default=None,
        help="host memory for caches kept there (default: what each job asks Slurm for, "
        "column mem_mb: the plan each job makes)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every plan in full")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from powersampling.config import load_config

    hf_logging.set_verbosity_error()  # config warnings are noise here
    try:
        config = load_config(args.configfile, args.schema)
        host = args.host_gib * GIB if args.host_gib is not None else None
        device = int(args.gpu_gib * GIB)
        jobs = plan_config(
            config,
            device,
            prompt_tokens=args.prompt_tokens,
            host_bytes=None if host is None else int(host),
            device_note=f"--gpu-gib {args.gpu_gib:g}",
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    host_text = gib(host) if host is not None else "what each job is given (mem_mb)"
    print(
        f"{args.configfile}: GPU {gib(device)}, prompts of {args.prompt_tokens} tokens, "
        f"host memory {host_text}"
    )
    print(format_table(jobs))
    for job in jobs:
        if args.verbose and job.plan is not None:
            print("\n" + job.plan.describe())
        elif job.plan is None:
            print(f"\n{job.model} / {job.method}: {job.note}")
    return 0
