"""Benchmark: how well the time plan predicts the toy world's generation jobs on this CPU.

Runs config/test.yaml's calibrations and generation jobs (rules ``calibrate`` and
``generate``, and what they need: data, the toy models, the dps controllers) in a throw-away
copy of the workflow, one job at a time (``--cores 1``: a job's speed is then its own, as a
calibration measured it), then plans the config with those calibrations and compares every
generation job's predicted time in the sampler with what its rows record (each seed's
``shard_decode_time_s``, summed). The same comparison with the assumed CPU speeds and the
cost models at ``max_new_tokens`` (no calibration) is reported beside it.

    python benchmarks/bench_plan.py                    # about 3 minutes on a 2-core CPU
    python benchmarks/bench_plan.py --workdir DIR      # read a finished run in DIR instead

Writes ``benchmarks/results/plan_toy_cpu.json``: per job, predicted and actual seconds, and
the median absolute relative error and the worst, with and without calibration. Not a test:
the numbers depend on the machine and its load (noted in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from powersampling.config import load_config, n_shards, run_seeds
from powersampling.io import write_text_atomic
from powersampling.plan import time_plan
from powersampling.plan.cost import error_summary, job_comparison
from powersampling.stages.calibration import device_name

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow", "config", "reports", "environment.yml"]
CONFIG = "config/test.yaml"


def targets(config: dict) -> list[str]:
    """Every generation shard of the config, and the calibrations' table."""
    paths = ["results/calibration/calibration.parquet"]
    for task, model, method in run_seeds(config):
        for shard in range(n_shards(config, task)):
            paths.append(f"results/generations/{task}/{model}/{method}/shard{shard:03d}.parquet")
    return paths


def run_workflow(workdir: Path, config: dict, cores: int) -> float:
    """Calibrations and generation jobs of the config in ``workdir`` (a copy of the
    workflow); returns the wall time."""
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, workdir / name)
    began = time.perf_counter()
    subprocess.run(
        # The targets first: --configfile takes every value that follows it.
        [sys.executable, "-m", "snakemake", *targets(config), "--cores", str(cores),
         "--configfile", CONFIG],
        cwd=workdir, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    return time.perf_counter() - began


def generation_rows(workdir: Path) -> pd.DataFrame:
    columns = ["task", "model", "method", "seed", "shard", "tokens_decoded", "shard_decode_time_s"]
    paths = sorted((workdir / "results" / "generations").rglob("shard*.parquet"))
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


def compare(config: dict, rows: pd.DataFrame, calibration_dir: Path | None) -> dict:
    plan = time_plan(config, calibration_dir=calibration_dir)
    jobs = job_comparison(plan, rows)
    tokens_error = jobs["predicted_tokens_per_answer"] / jobs["tokens_per_answer"] - 1
    return {
        **error_summary(jobs),
        "median_abs_tokens_error": round(float(tokens_error.abs().median()), 3),
        "jobs_table": [
            {
                "job": f"{r.task}/{r.model}/{r.method}/shard{r.shard:03d}",
                "predicted_s": round(r.predicted_decode_s, 3),
                "actual_s": round(r.decode_s, 3),
                "error": round(r.decode_error, 3),
                "predicted_tokens_per_answer": round(r.predicted_tokens_per_answer, 1),
                "tokens_per_answer": round(r.tokens_per_answer, 1),
            }
            for r in jobs.itertuples()
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a finished run of config/test.yaml")
    parser.add_argument(
        "--cores", type=int, default=1, help="jobs at once (with --workdir: the run's)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/plan_toy_cpu.json"))
    args = parser.parse_args()

    config = load_config(ROOT / CONFIG, ROOT / "config" / "schema.yaml")
    wall = None
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bench_plan_"))
        wall = run_workflow(workdir, config, args.cores)
    else:
        workdir = Path(args.workdir)
    rows = generation_rows(workdir)
    calibrated = compare(config, rows, workdir / "results" / "calibration")
    assumed = compare(config, rows, None)
    result = {
        "name": "plan_toy_cpu",
        "config": CONFIG,
        "machine": {
            "cpu": device_name(torch.device("cpu")),
            "cores": os.cpu_count(),
            "load_average_at_the_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "cores": args.cores,  # with --workdir: the run's, as given
        "workflow_wall_s": wall,
        "calibrated": calibrated,
        "assumed": {k: v for k, v in assumed.items() if k != "jobs_table"},
        "assumed_jobs": assumed["jobs_table"],
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    for label, summary in [("calibrated", calibrated), ("assumed (no calibration)", assumed)]:
        print(
            f"{label}: {summary['jobs']} jobs, median |error| "
            f"{summary['median_abs_error']:.1%}, worst {summary['worst_error']:+.1%} "
            f"({summary['worst_job']})"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
