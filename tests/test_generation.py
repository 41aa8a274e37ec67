"""Generating a shard: prompts in, one schema-conforming row per problem out."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pyarrow as pa
import pytest
from helpers_models import (  # noqa: F401
    EOS_ID,
    one_torch_thread,
    saved_job_inputs,
    tiny_model,
    tiny_tokenizer,
)

from powersampling.errors import UserError
from powersampling.generation import generate_shard
from powersampling.io import GENERATION_SCHEMA, read_parquet, write_parquet
from powersampling.tasks import Grade, Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SumTask(Task):
    """A minimal task: the prompt is the question followed by '='."""

    kind = "sum_for_tests"

    def load(self) -> pd.DataFrame:
        raise NotImplementedError

    def prompt(self, row, tokenizer=None, chat_template=False, instruct=False) -> str:
        return f"{row['question']}="

    def grade(self, completion, row) -> Grade:
        return Grade(completion.strip(), completion.strip() == row["answer"], True, "exact")


PROBLEMS = pd.DataFrame(
    {
        "problem_id": [f"p{i}" for i in range(5)],
        "question": ["1+2", "3+4+5", "9", "12+30", "7+7"],
        "answer": ["3", "12", "9", "42", "14"],
    }
)
RUN = dict(task_name="sums", model_name="tiny", seed=11, shard=2, progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_greedy_shard_has_the_schema(model, tokenizer, tmp_path):
    method = {"sampler": "greedy", "max_new_tokens": 8}
    lines = []
    df = generate_shard(
        model, tokenizer, SumTask("sums", {}), PROBLEMS,
        method_name="greedy", method=method, batch_size=2, log=lines.append, **RUN,
    )  # fmt: skip
    assert list(df.columns) == GENERATION_SCHEMA.names
    pa.Table.from_pandas(df, schema=GENERATION_SCHEMA, preserve_index=False)  # casts cleanly
    assert df["problem_id"].tolist() == PROBLEMS["problem_id"].tolist()
    assert (df["chain"] == 0).all() and (df["temperature"] == 0.0).all()
    assert (df["sampler"] == "greedy").all() and (df["shard"] == 2).all()
    assert df["prompt"].tolist() == [q + "=" for q in PROBLEMS["question"]]
    assert df["n_prompt_tokens"].tolist() == [len(q) + 1 for q in PROBLEMS["question"]]
    for ids, text, n, reason in df[
        ["completion_ids", "completion", "n_new_tokens", "finish_reason"]
    ].itertuples(index=False):
        assert len(ids) == n and text == tokenizer.decode(ids, skip_special_tokens=True)
        assert (reason == "eos") == (ids[-1] == EOS_ID)
    assert df["acceptance_rate"].isna().all() and df["sampler_trace"].isna().all()
    # One decoding time for the whole shard, on every row; no chains here.
    assert df["shard_decode_time_s"].nunique() == 1 and (df["shard_decode_time_s"] > 0).all()
    assert df["chain_lifetime_s"].isna().all()
    assert len(lines) == 3  # one line per batch of 2
    path = tmp_path / "shard002.parquet"
    write_parquet(df, path, schema=GENERATION_SCHEMA)
    back = read_parquet(path)
    assert back["completion_ids"].map(list).tolist() == df["completion_ids"].tolist()


def test_temperature_shard_is_reproducible_and_seeded_per_shard(model, tokenizer):
    method = {"sampler": "temperature", "T": 1.5, "top_k": None, "max_new_tokens": 10}
    task = SumTask("sums", {})

    def run(**overrides):
        args = {**RUN, "method_name": "t15", "method": method, **overrides}
        return generate_shard(model, tokenizer, task, PROBLEMS, **args)

    a, b, other_shard = run(), run(), run(shard=3)
    cols = ["completion_ids", "logp_sum"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert a["completion_ids"].tolist() != other_shard["completion_ids"].tolist()
    assert (a["temperature"] == 1.5).all()


def test_empty_shard_is_a_user_error(model, tokenizer):
    with pytest.raises(UserError, match="shard 2 of task sums has no problems"):
        generate_shard(
            model, tokenizer, SumTask("sums", {}), PROBLEMS.iloc[:0],
            method_name="greedy", method={"sampler": "greedy", "max_new_tokens": 4}, **RUN,
        )  # fmt: skip


@pytest.mark.parametrize("sampler", ["greedy", "power"])
def test_a_long_prompt_gets_the_budget_its_context_leaves(model, tokenizer, sampler):
    """57 prompt tokens + 8 new tokens > 64 positions: that row gets 7, the others 8."""
    problems = PROBLEMS.copy()
    problems.loc[3, "question"] = "1+" * 28
    method = {"sampler": sampler, "max_new_tokens": 8}
    if sampler == "power":
        method.update(alpha=2.0, block_size=3, mcmc_steps=2)
    frame = generate_shard(
        model, tokenizer, SumTask("sums", {}), problems,
        method_name=sampler, method=method, **RUN,
    )  # fmt: skip
    assert frame.loc[3, "n_prompt_tokens"] == 57
    assert frame["token_budget"].tolist() == [8, 8, 8, 7] + [8] * (len(problems) - 4)
    assert (frame["n_new_tokens"] <= frame["token_budget"]).all()
    assert frame.loc[3, "n_prompt_tokens"] + frame.loc[3, "n_new_tokens"] <= 64


def test_a_prompt_that_leaves_no_room_names_the_problem(model, tokenizer):
    problems = PROBLEMS.copy()
    problems.loc[3, "question"] = "1+" * 32  # 65 prompt tokens > 64 positions
    with pytest.raises(UserError, match="problem p3 of task sums: the prompt of 65 tokens"):
        generate_shard(
            model, tokenizer, SumTask("sums", {}), problems,
            method_name="greedy", method={"sampler": "greedy", "max_new_tokens": 8}, **RUN,
        )  # fmt: skip


# --------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A toy-shaped model folder and a synthetic task's data file, as the workflow has them."""
    return saved_job_inputs(tmp_path_factory.mktemp("job"), 4)


def run_job(job_inputs, tmp_path, generation, log, seeds=(0,)):
    from powersampling.stages.generate import generate
    from powersampling.stages.shards import ShardJob

    root, task = job_inputs
    job = ShardJob(
        data_path=root / "sums.parquet", model_name="m", model={"source": "toy"},
        model_dir=str(root / "m"), task_name="sums", task=task, task_seed=0, rows=(0, 4),
        device="cpu", threads=1, shard=0,
    )  # fmt: skip
    return generate(
        job, method_name="power",
        method={"sampler": "power", "max_new_tokens": 4, "block_size": 2}, seeds=list(seeds),
        generation=generation, out_path=tmp_path / "out.parquet", log=log,
    )  # fmt: skip


def test_a_shard_job_reads_its_rows_and_prompts_and_names_an_empty_shard(job_inputs):
    from powersampling.stages.shards import ShardJob

    root, task = job_inputs
    job = ShardJob(
        data_path=root / "sums.parquet", model_name="m", model={"source": "toy"},
        model_dir=str(root / "m"), task_name="sums", task=task, task_seed=0, rows=(1, 3),
        device="cpu", threads=1,
    )  # fmt: skip
    inputs = job.read_inputs()
    assert [row["problem_id"] for row in inputs.rows] == list(inputs.problems["problem_id"])
    assert len(inputs.rows) == len(inputs.prompts) == len(inputs.prompt_ids) == 2
    assert job.source == str(root / "m")
    with pytest.raises(UserError, match=r"^task sums has no problems \(rows 4-4\)"):
        dataclasses.replace(job, rows=(4, 4)).read_inputs()
    with pytest.raises(UserError, match=r"^shard 2 of task sums has no problems"):
        dataclasses.replace(job, rows=(4, 4), shard=2).read_inputs()


def test_the_job_prints_its_memory_plan_and_decodes_the_batch_it_allows(job_inputs, tmp_path):
    lines = []
    frame = run_job(job_inputs, tmp_path, {"batch_size": 3, "progress": False}, lines.append)
    plan = next(line for line in lines if line.startswith("memory plan for m / power"))
    assert "batch 3 of 3 requested" in plan and "rolling KV buffer" in plan
    assert len(frame) == 4 and (tmp_path / "out.parquet").exists()


def test_the_seeds_of_a_job_are_each_what_they_are_alone(job_inputs, tmp_path):
    """One job runs several seeds on one model load; a seed's rows do not depend on which
    other seeds share its job."""
    generation = {"batch_size": 3, "progress": False}
    both = run_job(job_inputs, tmp_path / "both", generation, print, seeds=(0, 1))
    alone = run_job(job_inputs, tmp_path / "alone", generation, print, seeds=(1,))
    assert sorted(both["seed"].unique()) == [0, 1] and len(both) == 8
    columns = ["problem_id", "completion", "logp_sum", "tokens_decoded"]
    pd.testing.assert_frame_equal(
        both.loc[both["seed"] == 1, columns].reset_index(drop=True), alone[columns]
    )
    assert not both.loc[both["seed"] == 0, "completion_ids"].equals(alone["completion_ids"])


def test_the_job_refuses_a_device_too_small_before_loading_weights(job_inputs, tmp_path):
    lines = []
    with pytest.raises(
        UserError, match=r"m / power: not even one row fits on the device: the weights take"
    ):
        run_job(job_inputs, tmp_path, {"batch_size": 3, "device_memory_gib": 1e-5}, lines.append)
    assert not any("loading model" in line for line in lines)
    assert not (tmp_path / "out.parquet").exists()
