"""The time plan: the samplers' cost models against measured tokens, the plan of a config,
the runtimes the rules ask for, the CLI, and the cost table against a run's rows.

Cost models are checked where they are exact: on a model that never emits EOS every answer
runs to the budget, so the formulas' answer length is every answer's. The measured means
are over many independent chains (fixed seeds), compared at 4 standard errors.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_qwen import PROMPT

from powersampling.config import load_config, n_shards, run_seeds
from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.plan import (
    ASSUMED_CPU,
    CALIBRATION_COLUMNS,
    calibration_path,
    packed_wall_s,
    runtime_minutes,
    time_plan,
)
from powersampling.samplers import method_params
from powersampling.samplers.basic import GreedySampler, TemperatureSampler
from powersampling.samplers.dps import DpsSetup, DynamicPowerSampler
from powersampling.samplers.power import PowerSampler
from powersampling.samplers.smc import SMCSampler
from powersampling.toy.enumerate import (
    enumerate_answers,
    expected_tokens_decoded,
    random_tiny_model,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
EOS = 2
N_CHAINS = 400


def no_eos(model):
    """``model`` with EOS pushed to probability zero (a bias on its head)."""
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    head = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = -1e4
    model.lm_head = head
    return model


@pytest.fixture(scope="module")
def endless():
    """A tiny random Qwen2 over {0, 1, EOS=2} that never ends an answer early, its engine."""
    model = no_eos(random_tiny_model(3, seed=4, init_std=0.25))
    return model, DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


def power_params(**given):
    return method_params({"sampler": "power", **given})


# ---------------------------------------------------------------- cost models


def test_power_cost_model_by_hand():
    # Blocks of 4 up to 16 tokens, an answer of 10: caps 4, 8, 12 are run (the third holds
    # the EOS); lengths 4, 8, 10; two steps each cost (L + 1) / 2.
    params = power_params(block_size=4, max_new_tokens=16, mcmc_steps=2)
    assert PowerSampler.expected_tokens(params, 10) == 10 + 2 * (2.5 + 4.5 + 5.5)
    # stop_at_eos false: the finished answer stays through the last block (cap 16).
    params["stop_at_eos"] = False
    assert PowerSampler.expected_tokens(params, 10) == 10 + 2 * (2.5 + 4.5 + 5.5 + 5.5)
    # No MH steps: the answer is decoded once; an answer is never longer than the budget.
    assert PowerSampler.expected_tokens(power_params(mcmc_steps=0, max_new_tokens=64), 30) == 30
    assert PowerSampler.expected_tokens(
        power_params(block_size=4, max_new_tokens=8, mcmc_steps=1), 100
    ) == 8 + (2.5 + 4.5)


@pytest.mark.parametrize(("block_size", "steps", "cap"), [(1, 2, 4), (2, 3, 4), (3, 1, 4)])
def test_power_cost_model_is_the_exact_cost_when_no_answer_ends_early(
    model, block_size, steps, cap
):
    """Enumerating every answer as if EOS were an ordinary token (all answers run to the
    cap): the exact expected tokens_decoded equals the cost model at the cap."""
    support = enumerate_answers(model, PROMPT, [], cap, proposal_temperature=0.5)
    exact = expected_tokens_decoded(support, 2.0, block_size, steps)
    params = power_params(alpha=2.0, block_size=block_size, max_new_tokens=cap, mcmc_steps=steps)
    assert PowerSampler.expected_tokens(params, cap) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    ("block_size", "steps", "cap", "stop_at_eos"),
    [(4, 2, 10, True), (3, 4, 12, False), (12, 3, 12, True)],
)
def test_power_cost_model_against_measured_tokens(endless, block_size, steps, cap, stop_at_eos):
    _, engine = endless
    params = dict(alpha=2.0, block_size=block_size, max_new_tokens=cap, mcmc_steps=steps)
    sampler = PowerSampler(engine, stop_at_eos=stop_at_eos, **params)
    out = sampler.sample([PROMPT] * N_CHAINS, None, chain_seeds=list(range(N_CHAINS)))
    tokens = np.array([o["tokens_decoded"] for o in out], dtype=float)
    assert all(o["n_new_tokens"] == cap for o in out)
    predicted = PowerSampler.expected_tokens(sampler.params, cap)
    se = tokens.std(ddof=1) / math.sqrt(N_CHAINS)
    assert abs(tokens.mean() - predicted) < 4 * se, (tokens.mean(), predicted, se)
    # The model has power: a cost model that forgot the MH steps is far off.
    assert abs(tokens.mean() - cap) > 10 * se


def test_smc_and_plain_sampling_cost_models_against_measured_tokens(endless):
    _, engine = endless
    cap, prompts = 7, [PROMPT] * 6
    smc = SMCSampler(engine, alpha=2.0, particles=5, max_new_tokens=cap)
    measured = [r["tokens_decoded"] for r in smc.sample(prompts, None, chain_seeds=range(6))]
    assert measured == [SMCSampler.expected_tokens(smc.params, cap)] * 6 == [35.0] * 6
    for sampler in (
        TemperatureSampler(engine, T=1.0, max_new_tokens=cap),
        GreedySampler(engine, max_new_tokens=cap),
    ):
        out = sampler.sample(prompts, torch.Generator().manual_seed(0))
        assert [r["tokens_decoded"] for r in out] == [type(sampler).expected_tokens({}, cap)] * 6
    # A budget caps the answer the cost model assumes.
    assert SMCSampler.expected_tokens(smc.params, 100) == 5 * cap


class _AlwaysMore:
    """A controller that never finds the trajectories enough: every question gets k_max."""

    name = "gbdt"
    info = {"train_questions": []}

    def p_enough(self, features):
        return np.zeros(len(features))


class _Verdict:
    extracted, compliant = None, True


def test_dps_cost_model_is_k_max_pool_trajectories(endless):
    """A question the controller never stops costs k_max trajectories of its pool method:
    the bound the plan takes."""
    from powersampling.dps.policy import Schedule

    _, engine = endless
    pool = {"sampler": "power", "alpha": 2.0, "block_size": 3, "max_new_tokens": 6, "mcmc_steps": 2}
    schedule = {"k_start": 2, "k_step": 2, "k_max": 4}
    setup = DpsSetup("pool", pool, Schedule(**schedule), _AlwaysMore())
    setup.grade = lambda texts, rows: [_Verdict() for _ in texts]
    setup.decode = lambda ids: ""
    sampler = DynamicPowerSampler(engine, controller="gbdt", tau=0.5)
    sampler.prepare(setup)
    n = 150
    rows = [{"problem_id": f"q{i}"} for i in range(n)]
    out = sampler.sample(
        [PROMPT] * n,
        None,
        problems=rows,
        trajectory_seeds=[[1000 * i + j for j in range(4)] for i in range(n)],
    )
    tokens = np.array([r["tokens_decoded"] for r in out], dtype=float)
    settings = {"pool": "pool", "pool_method": pool, "schedule": schedule}
    predicted = DynamicPowerSampler.expected_tokens(sampler.params, 6, settings)
    assert predicted == 4 * PowerSampler.expected_tokens(power_params(**pool), 6)
    se = tokens.std(ddof=1) / math.sqrt(n)
    assert abs(tokens.mean() - predicted) < 4 * se, (tokens.mean(), predicted, se)


# ---------------------------------------------------------------- the plan of a config


@pytest.fixture(scope="module")
def test_config():
    return load_config(ROOT / "config" / "test.yaml", SCHEMA)


@pytest.fixture(scope="module")
def paper_config():
    return load_config(ROOT / "config" / "paper.yaml", SCHEMA)


def write_calibration(folder: Path, task: str, model: str, method: str, **measured) -> Path:
    """A calibration file as rule calibrate writes it, with the given measurements."""
    row = {column: 0 for column in CALIBRATION_COLUMNS}
    row.update(model=model, method=method, task=task, sampler="power", device="a test CPU")
    row.update(device_type="cpu", peak_memory_of="peak RSS (getrusage)", **measured)
    path = Path(calibration_path(task, model, method, folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row], columns=CALIBRATION_COLUMNS).to_parquet(path)
    return path


def test_the_plan_has_every_generation_job_at_its_cost_model(test_config):
    plan = time_plan(test_config)
    runs = run_seeds(test_config)
    assert len(plan.jobs) == sum(n_shards(test_config, task) for task, _, _ in runs)
    assert plan.assumptions.device is ASSUMED_CPU  # no GPU asked for
    for job in plan.jobs:
        assert job.problems == 12 and job.seeds == len(runs[job.task, job.model, job.method])
        assert job.cost.tokens_from == "model" and job.cost.calibration is None
        assert job.total_s > job.sampler_s > 0
    power = plan.job("arithmetic", "toy", "power_2", 0)
    params = method_params(test_config["methods"]["power_2"])
    assert power.cost.tokens_per_answer == PowerSampler.expected_tokens(params, 24)
    # dps decodes through its pool: k_max (4) of its trajectories, its batch and rows.
    dps = plan.job("arithmetic", "toy", "dps_gbdt", 0)
    assert dps.cost.tokens_per_answer == 4 * power.cost.tokens_per_answer
    assert dps.cost.batch == power.cost.batch
    # The calibrations: one per (model, decoded method), dps's pool counted once.
    assert ("toy", "power_2") in plan.calibrations and ("toy", "dps_gbdt") not in plan.calibrations


def test_a_calibration_replaces_assumed_speeds_and_tokens(test_config, tmp_path):
    measured = dict(batch=16, rows=12, mean_prompt_tokens=40.0, load_s=3.0,
                    prefill_tokens_per_s=1e4, decode_tokens_per_s=1000.0,
                    tokens_per_answer=50.0, new_tokens_per_answer=20.0)  # fmt: skip
    write_calibration(tmp_path, "arithmetic", "toy", "power_2", **measured)
    plan = time_plan(test_config, calibration_dir=tmp_path)
    job = plan.job("arithmetic", "toy", "power_2", 1)
    assert job.cost.tokens_from == "measured" and job.cost.tokens_per_answer == 50
    # 12 problems in one call of 12 rows, as measured: each seed's prefill + decode.
    assert job.seeds == 4  # power_2's seeds 0, 1 and the dps pool's 0-3
    assert job.sampler_s == pytest.approx(4 * (12 * 40 / 1e4 + 12 * 50 / 1000))
    assert job.total_s == pytest.approx(job.sampler_s + 3.0)
    # dps decodes through power_2: its calibration, k_max of its measured trajectories.
    assert plan.job("arithmetic", "toy", "dps_gbdt", 0).cost.tokens_per_answer == 4 * 50
    # Other methods, and power_2 on another model, keep the assumptions.
    assert plan.job("arithmetic", "toy", "greedy", 0).cost.calibration is None
    assert plan.job("arithmetic", "toy-L1+last", "power_2", 0).cost.tokens_from == "model"
    # Fewer rows in flight than measured decode fewer tokens per second, never more.
    cost = job.cost
    assert cost.decode_tokens_per_s(12) == pytest.approx(1000)
    assert 500 < cost.decode_tokens_per_s(6) < 1000 < cost.decode_tokens_per_s(16) < 4000 / 3


def test_a_calibration_it_cannot_read_is_an_error(test_config, tmp_path):
    path = write_calibration(tmp_path, "arithmetic", "toy", "greedy", rows=1)
    pd.DataFrame({"model": ["toy"]}).to_parquet(path)
    with pytest.raises(UserError, match="is not a calibration"):
        time_plan(test_config, calibration_dir=tmp_path)
    with pytest.raises(UserError, match="no calibration folder"):
        time_plan(test_config, calibration_dir=tmp_path / "absent")


def test_runtime_minutes():
    resources = {"generation_runtime_min": 60, "runtime_safety_factor": 2, "max_runtime_min": 2880}
    assert runtime_minutes(10.0, resources) == 60  # the floor
    assert runtime_minutes(5 * 3600.0, resources) == 600
    assert runtime_minutes(5 * 3600.0, resources, attempt=2) == 1200  # retries grow it
    assert runtime_minutes(20 * 3600.0, resources) == 2400
    assert runtime_minutes(20 * 3600.0, resources, attempt=2) == 2880  # capped
    assert runtime_minutes(math.nan, resources) == 60  # no prediction: the floor


def test_a_job_over_the_cap_is_refused_with_a_shard_size_that_fits(paper_config):
    config = copy.deepcopy(paper_config)
    config["resources"]["max_runtime_min"] = 300
    refused = time_plan(config).over_cap()
    assert refused and all("over resources.max_runtime_min (300 min)" in r for r in refused)
    assert all("/power/" in r or "/smc/" in r for r in refused), refused
    line = next(r for r in refused if r.startswith("generation job math500/qwen2.5-7b/smc/"))
    fits = int(re.search(r"shard_size \(50\) to (\d+) or less", line).group(1))
    assert 1 <= fits < 50
    config["tasks"]["math500"]["shard_size"] = fits
    still = [r for r in time_plan(config).over_cap() if "math500/qwen2.5-7b/smc/" in r]
    assert not still, still
    # Power's chains decode side by side: a job's time is a chain's, whatever the shard.
    power = next(r for r in refused if r.startswith("generation job math500/qwen2.5-7b/power/"))
    assert "not even one problem per job fits" in power


def test_jobs_are_packed_greedily():
    assert packed_wall_s([3.0, 1.0, 2.0], 1) == 6.0
    assert packed_wall_s([5.0, 4.0, 3.0, 3.0], 2) == 8.0
    assert packed_wall_s([1.0, 1.0], 8) == 1.0


def test_the_command_line_prints_the_plan_in_seconds(paper_config, capsys):
    from powersampling.plan import main

    assert main(["--configfile", str(ROOT / "config" / "paper.yaml"), "--schema", str(SCHEMA),
                 "--gpus", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    jobs = sum(n_shards(paper_config, task) for task, _, _ in run_seeds(paper_config))
    assert f"rule generate: {jobs} jobs" in out
    assert "ASSUMED, not measured" in out and "wall time on 8 GPUs" in out
    row = next(
        line.split() for line in out.splitlines() if line.startswith("math500    qwen2.5-7b")
    )
    assert row[:4] == ["math500", "qwen2.5-7b", "base", "10"] and row[6] == "3,072"


def dry_run(workdir: Path, *config_values: str) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the paper config in an empty working directory."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "paper.yaml"),
    ]
    if config_values:
        command += ["--config", *config_values]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)  # fmt: skip


def test_generation_jobs_ask_slurm_for_the_plans_runtime(paper_config, tmp_path):
    result = dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = time_plan(paper_config)
    blocks = (result.stdout + result.stderr).split("\nrule ")
    checked = 0
    for block in blocks:
        if not block.startswith(("generate:", "calibrate:")):
            continue
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: (.*)", block)[1]))
        runtime = int(re.search(r"runtime=(\d+)", block)[1])
        if block.startswith("generate:"):
            job = plan.job(wildcards["task"], wildcards["model"], wildcards["method"],
                           int(wildcards["shard"]))  # fmt: skip
        else:
            job = plan.calibrations[wildcards["model"], wildcards["method"]]
        assert (
            runtime
            == plan.runtime_min(job)
            == runtime_minutes(job.total_s, paper_config["resources"])
        )
        checked += 1
    assert checked == len(plan.jobs) + len(plan.calibrations)


def test_the_workflow_refuses_a_job_over_the_cap_before_any_job(tmp_path):
    result = dry_run(tmp_path, "resources={max_runtime_min: 300}")
    assert result.returncode != 0
    assert "the time plan refuses" in result.stderr
    assert "lower tasks.math500.shard_size (50) to" in result.stderr


def test_the_cost_table_sets_the_prediction_against_the_rows(test_config, tmp_path):
    from powersampling.plan.cost import cost_table, error_summary, job_comparison

    measured = dict(batch=16, rows=12, mean_prompt_tokens=40.0, load_s=3.0,
                    prefill_tokens_per_s=1e4, decode_tokens_per_s=1000.0,
                    tokens_per_answer=50.0, new_tokens_per_answer=20.0)  # fmt: skip
    write_calibration(tmp_path, "arithmetic", "toy", "power_2", **measured)
    plan = time_plan(test_config, calibration_dir=tmp_path)
    predicted = plan.job("arithmetic", "toy", "power_2", 0).sampler_s  # 4 seeds
    rows = []
    for shard, per_seed in [(0, predicted / 4 / 2), (1, predicted / 4)]:
        for seed in range(4):
            rows += [
                {
                    "task": "arithmetic",
                    "model": "toy",
                    "method": "power_2",
                    "seed": seed,
                    "shard": shard,
                    "tokens_decoded": 40 + 20 * (i % 2),
                    "shard_decode_time_s": per_seed,
                }  # fmt: skip
                for i in range(12)
            ]
    generations = pd.DataFrame(rows)
    jobs = job_comparison(plan, generations)
    # Shard 0 took half the predicted time (the plan is 100% over), shard 1 exactly it.
    assert jobs["decode_error"].tolist() == pytest.approx([1.0, 0.0])
    assert jobs["tokens_per_answer"].tolist() == [50.0, 50.0]
    summary = error_summary(jobs)
    assert summary["median_abs_error"] == pytest.approx(0.5)
    assert summary["worst_error"] == pytest.approx(1.0)
    assert summary["worst_job"] == "arithmetic/toy/power_2/0"
    table = cost_table(plan, generations)
    (row,) = table.itertuples()
    assert (row.jobs, row.answers, row.calibrated, row.tokens_from) == (2, 96, True, "measured")
    assert row.tokens_error == pytest.approx(0.0)
    assert row.decode_s == pytest.approx(1.5 * predicted)
    assert row.decode_error == pytest.approx(2 / 1.5 - 1)
    assert row.time_per_answer_s == pytest.approx(1.5 * predicted / 96)


def test_the_manuals_paper_numbers_are_the_plans(paper_config):
    """docs/plan.md quotes the paper config's plan: recomputed here, so a change to the
    memory plan, the cost models or the assumptions that moves them fails until the manual
    says the new numbers."""
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "plan.md").read_text())
    quote = re.search(r"the plan is ([\d,]+) jobs and ([\d,]+) GPU-hours", text)
    plan = time_plan(paper_config)
    total_h = sum(j.total_s for j in plan.jobs) / 3600
    assert int(quote[1]) == len(plan.jobs) and int(quote[2].replace(",", "")) == round(total_h)
    longest = max(plan.jobs, key=lambda j: j.total_s)
    quote = re.search(r"power sampling of an AlpacaEval shard, is predicted at (\d+) hours", text)
    assert (longest.task, longest.model, longest.method) == (
        "alpaca", "phi-3.5-mini-instruct", "power"
    )  # fmt: skip
    assert int(quote[1]) == round(longest.total_s / 3600)
    assert f"fits {longest.cost.batch} chains at once" in text
    typical = time_plan(paper_config, answer_tokens=600)
    quote = re.search(r"`--answer-tokens 600`\) the plan is ([\d,]+) GPU-hours", text)
    assert int(quote[1]) == round(sum(j.total_s for j in typical.jobs) / 3600)
    calibrations = sum(j.total_s for j in plan.calibrations.values()) / 3600
    quote = re.search(r"calibration is (\d+) jobs, predicted at ([\d.]+) GPU-hours", text)
    assert int(quote[1]) == len(plan.calibrations)
    assert float(quote[2]) == round(calibrations, 1)
