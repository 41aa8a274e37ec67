"""Rule calibrate's stage: a short slice of a real shard through the generation code, its
speeds and tokens measured, one row written; and what the time plan reads back."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from helpers_models import saved_job_inputs

from powersampling.generation import ShardPrompts
from powersampling.plan import CALIBRATION_COLUMNS
from powersampling.stages.calibration import calibrate, calibration_row, repeated

N_PROBLEMS = 6
POWER = {"sampler": "power", "alpha": 2.0, "max_new_tokens": 6, "block_size": 3, "mcmc_steps": 2}
SMC = {"sampler": "smc", "alpha": 2.0, "particles": 3, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A toy-shaped model folder and a synthetic task's data file, as the workflow has them."""
    return saved_job_inputs(tmp_path_factory.mktemp("job"), N_PROBLEMS)


def run_calibration(job_inputs, out: Path, method: dict, batch: int, problems: int = 2):
    from powersampling.stages.shards import ShardJob

    root, task = job_inputs
    job = ShardJob(
        data_path=root / "sums.parquet", model_name="m", model={"source": "toy"},
        model_dir=str(root / "m"), task_name="sums", task=task, task_seed=0,
        rows=(0, problems), device="cpu", threads=1, shard=0,
    )  # fmt: skip
    return calibrate(
        job, method_name="x", method=method, seed=7, shard_problems=N_PROBLEMS,
        generation={"batch_size": batch, "progress": False}, out_path=out,
    )  # fmt: skip


def test_a_calibration_measures_a_full_calls_rows(job_inputs, tmp_path):
    out = tmp_path / "cal" / "power.parquet"
    table = run_calibration(job_inputs, out, POWER, batch=4)
    assert list(pd.read_parquet(out).columns) == CALIBRATION_COLUMNS
    row = pd.read_parquet(out).iloc[0]
    assert list(tmp_path.rglob("*.parquet")) == [out]  # nothing else written
    # Two problems fill a call of min(batch, shard) = 4 prompts; power: one row each.
    assert (row.problems, row.prompts, row.rows, row.batch, row.rows_per_prompt) == (2, 4, 4, 4, 1)
    assert row.device_type == "cpu" and row.device and row.threads == 1 and row.seed == 7
    assert row.max_new_tokens == 6 and row.task == "sums" and row.sampler == "power"
    # MH steps decode more than the answers hold; every rate is a ratio of what was timed.
    assert row.tokens_per_answer > row.new_tokens_per_answer > 0
    assert row.tokens_decoded == pytest.approx(4 * row.tokens_per_answer)
    assert row.decode_tokens_per_s == pytest.approx(row.tokens_decoded / row.decode_s)
    assert row.prefill_tokens_per_s == pytest.approx(row.prefill_tokens / row.prefill_s)
    assert row.prefill_tokens == pytest.approx(4 * row.mean_prompt_tokens)
    assert 0 < row.decode_s <= row.sampler_s and row.load_s > 0
    # A short call is repeated (same seed, same tokens) and its median time taken.
    assert row.calls == 5 or row.calls * row.sampler_s >= 1.0
    assert row.peak_memory_bytes > 2**20 and row.peak_memory_of.startswith("peak RSS")
    assert table.equals(pd.read_parquet(out))


def test_a_calibration_of_particles_fills_the_batch_with_whole_prompts(job_inputs, tmp_path):
    table = run_calibration(job_inputs, tmp_path / "smc.parquet", SMC, batch=7)
    row = table.iloc[0]
    # 7 rows hold two prompts of 3 particles: the call a job of the shard makes.
    assert (row.prompts, row.rows, row.rows_per_prompt) == (2, 6, 3)
    assert row.tokens_per_answer > 3  # every particle's tokens count


def test_a_slice_is_repeated_with_its_own_problem_ids(job_inputs):
    problems = pd.DataFrame({"problem_id": ["a", "b"], "question": ["1+1", "2+2"]})
    prompts = ShardPrompts(problems.to_dict("records"), ["p a", "p b"], [[1, 2], [3]])
    frame, cycled = repeated(problems, prompts, 5)
    assert [r["problem_id"] for r in cycled.rows] == ["a", "b", "a#1", "b#1", "a#2"]
    assert list(frame["problem_id"]) == ["a", "b", "a#1", "b#1", "a#2"]
    assert cycled.ids == [[1, 2], [3], [1, 2], [3], [1, 2]]
    assert list(frame["question"]) == ["1+1", "2+2", "1+1", "2+2", "1+1"]


def test_decode_time_is_the_calls_time_less_its_prefill():
    import torch

    frame = pd.DataFrame(
        {"shard_decode_time_s": [2.0, 2.0], "tokens_decoded": [30, 50], "n_new_tokens": [5, 7]}
    )
    prompts = ShardPrompts([{}, {}], ["", ""], [[1] * 10, [1] * 30])
    row = calibration_row(
        frame, prompts, load_s=1.0, prefill_s=0.1, device=torch.device("cpu"), threads=1
    )
    assert row["prefill_tokens_per_s"] == pytest.approx(400)
    assert row["decode_s"] == pytest.approx(2.0 - 40 / 400)
    assert row["decode_tokens_per_s"] == pytest.approx(80 / 1.9)
    assert row["tokens_per_answer"] == 40 and row["new_tokens_per_answer"] == 6
    assert math.isfinite(row["peak_memory_bytes"])
