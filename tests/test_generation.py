"""Generating a shard: prompts in, one schema-conforming row per problem out."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from helpers_models import EOS_ID, one_torch_thread, tiny_model, tiny_tokenizer  # noqa: F401

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

    def prompt(self, row, tokenizer=None, chat_template=False) -> str:
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


def test_too_long_prompt_names_the_problem(model, tokenizer):
    problems = PROBLEMS.copy()
    problems.loc[3, "question"] = "1+" * 28  # 57 prompt tokens + 8 new > 64 positions
    with pytest.raises(UserError, match="problem p3 of task sums: prompt of 57 tokens"):
        generate_shard(
            model, tokenizer, SumTask("sums", {}), problems,
            method_name="greedy", method={"sampler": "greedy", "max_new_tokens": 8}, **RUN,
        )  # fmt: skip
