"""Dynamic power sampling for real (the ``dps`` method) against its replay on the pool."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from powersampling.dps.controllers import Controller
from powersampling.dps.embeddings import question_embeddings
from powersampling.dps.evaluation import p_enough_matrix, trajectories_used
from powersampling.dps.policy import Schedule, dps_replays
from powersampling.dps.trajectories import (
    Trajectories,
    decision_features,
    split_questions,
    trajectory_pool,
)
from powersampling.dps.votes import vote_key
from powersampling.errors import UserError
from powersampling.generation import generate_shard
from powersampling.grading.verdict import Grade
from powersampling.samplers import method_params
from powersampling.samplers.dps import DpsSetup
from powersampling.toy.enumerate import random_tiny_model
from powersampling.toy.tokenizer import build_char_tokenizer, token_id

POOL = {"sampler": "power", "alpha": 4.0, "block_size": 3, "max_new_tokens": 6, "mcmc_steps": 2}
SCHEDULE = Schedule(2, 2, 8)
NAMES = {"task_name": "letters", "model_name": "tiny"}


class FirstLetterTask:
    """A task whose answer is the completion's first character; even code points are
    right, so each question's trajectories are right some of the time."""

    kind = "letters"

    def prompt(self, row, tokenizer=None, chat_template=False, instruct=False):
        return row["question"]

    def grade_many(self, completions, rows):
        grades = []
        for text in completions:
            first = text[:1] or None
            grades.append(
                Grade(
                    extracted=first,
                    correct=first is not None and ord(first) % 2 == 0,
                    compliant=len(text) <= 3,
                    grader="first letter",
                )
            )
        return grades


@pytest.fixture(scope="module")
def world():
    tokenizer = build_char_tokenizer()
    model = random_tiny_model(len(tokenizer), seed=3, hidden_size=32, num_layers=2,
                              logit_scale=6.0, init_std=0.3)  # fmt: skip
    # Printable ASCII and EOS only, so that every answer decodes to a character of its own.
    head = torch.nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        allowed = torch.zeros(len(tokenizer), dtype=torch.bool)
        allowed[[token_id(c) for c in "abcdefgh"] + [tokenizer.eos_token_id]] = True
        head.bias.copy_(torch.where(allowed, 0.0, -1e4))
    model.lm_head = head
    problems = pd.DataFrame(
        {"problem_id": [f"q{i:02d}" for i in range(24)], "question": [f"{i}?" for i in range(24)]}
    )
    task = FirstLetterTask()
    frames = [
        generate_shard(
            model,
            tokenizer,
            task,
            problems,
            method_name="pool",
            method=POOL,
            seed=seed,
            shard=0,
            batch_size=8,
            progress=False,
            **NAMES,
        )  # fmt: skip
        for seed in range(SCHEDULE.k_max)
    ]
    graded = pd.concat(frames, ignore_index=True)
    grades = task.grade_many(list(graded["completion"]), [{}] * len(graded))
    graded["extracted"] = [g.extracted for g in grades]
    graded["correct"] = [g.correct for g in grades]
    graded["compliant"] = [g.compliant for g in grades]
    pool = trajectory_pool(graded, SCHEDULE.k_max)
    pool["split"] = pool["problem_id"].map(split_questions(problems["problem_id"], 0.5, seed=0))
    vectors, _ = question_embeddings(model, tokenizer(list(problems["question"]))["input_ids"])
    embeddings = dict(zip(problems["problem_id"], vectors.astype(float), strict=True))
    return model, tokenizer, task, problems, pool, embeddings


def fitted_controller(pool, embeddings, name):
    """A controller fitted to labels that follow the agreement among trajectories, so that
    its p̂ spreads and questions stop at different k."""
    from sklearn.linear_model import LogisticRegression

    train = Trajectories.from_pool(pool[pool["split"] == "train"])
    emb = np.stack([embeddings[p] for p in train.problem_ids]) if name == "mlp_hq" else None
    x = pd.concat([decision_features(train, k, emb) for k in SCHEDULE.points], ignore_index=True)
    y = x["top_answer_share"].to_numpy() >= 0.75
    estimator = LogisticRegression(max_iter=1000).fit(x.fillna(0), y)
    return Controller(
        name,
        list(x.columns),
        _FillNaN(estimator),
        {"train_questions": list(train.problem_ids), "degenerate": False},
    )


class _FillNaN:
    """A fitted estimator behind NaN → 0 (empty answers have NaN diagnostics)."""

    def __init__(self, estimator):
        self.estimator, self.classes_ = estimator, estimator.classes_

    def predict_proba(self, x):
        return self.estimator.predict_proba(x.fillna(0))


@pytest.mark.parametrize("name", ["gbdt", "mlp_hq"])
def test_online_dps_equals_its_replay(world, name):
    model, tokenizer, task, problems, pool, embeddings = world
    controller = fitted_controller(pool, embeddings, name)
    test = Trajectories.from_pool(pool[pool["split"] == "test"])
    emb = np.stack([embeddings[p] for p in test.problem_ids])
    p = p_enough_matrix(controller, test, SCHEDULE.points, emb)
    tau = float(np.median(1 - p[:, 0]))  # half the questions go on after k = 2
    replay = dps_replays(test, p, [tau], SCHEDULE, name).set_index("problem_id")
    assert replay["k"].nunique() > 1  # the comparison covers stopping and going on

    held_out = problems[problems["problem_id"].isin(test.problem_ids)].reset_index(drop=True)
    setup = DpsSetup(pool_name="pool", power=POOL, schedule=SCHEDULE, controller=controller,
                     embeddings=embeddings if name == "mlp_hq" else None)  # fmt: skip
    online = generate_shard(model, tokenizer, task, held_out, method_name="dps",
                            method={"sampler": "dps", "controller": name, "tau": tau}, seed=0,
                            shard=0, batch_size=8, setup=setup, progress=False,
                            **NAMES)  # fmt: skip
    # the rows record the pool method as configured (its null proposal temperature too)
    assert json.loads(online["sampling"].iloc[0])["pool"] == {"sampler": "power",
                                                                **method_params(POOL)}  # fmt: skip
    online = online.set_index("problem_id").loc[replay.index]
    grades = task.grade_many(list(online["completion"]), [{}] * len(online))
    k = [trajectories_used(t, SCHEDULE) for t in online["sampler_trace"]]
    assert k == replay["k"].tolist()
    answers = [None if pd.isna(a) else a for a in replay["answer"]]
    assert [vote_key(g.extracted) for g in grades] == answers
    assert len(set(answers)) > 2
    assert [g.correct for g in grades] == replay["correct"].tolist()
    assert online["tokens_decoded"].tolist() == replay["tokens"].astype(int).tolist()
    # the row is the representative trajectory of the pool (chain = its index)
    by_id = pool.set_index(["problem_id", "trajectory"])
    for pid, row in online.iterrows():
        assert row["logp_sum"] == pytest.approx(
            by_id.loc[(pid, row["chain"]), "logp_sum"], rel=1e-5
        )
    # each decision's p̂ is the replay's, up to the float rounding of another batch layout
    for pid, trace in zip(online.index, online["sampler_trace"], strict=True):
        i = list(test.problem_ids).index(pid)
        got = [dict(r)["p_enough"] for r in trace]
        assert got == pytest.approx(p[i, : len(got)], abs=1e-6)


def test_dps_needs_its_setup(world):
    model, tokenizer, task, problems, _, _ = world
    method = {"sampler": "dps", "controller": "gbdt", "tau": 0.5}
    with pytest.raises(UserError, match="needs its controller"):
        generate_shard(model, tokenizer, task, problems.head(2), method_name="dps",
                       method=method, seed=0, shard=0, progress=False, **NAMES)  # fmt: skip


def test_question_embedding_is_the_mean_block_output_over_the_prompt():
    model = random_tiny_model(12, seed=4, hidden_size=16, num_layers=3, init_std=0.2)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    vectors, layer = question_embeddings(model, prompts, batch_size=2)
    assert layer == 1 and vectors.shape == (3, 16) and vectors.dtype == np.float32
    for ids, got in zip(prompts, vectors, strict=True):
        with torch.no_grad():
            states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is block l's output (for every block but the last)
        assert got == pytest.approx(states[2][0].mean(0).numpy(), abs=1e-5)
    first, _ = question_embeddings(model, prompts, layer=0, batch_size=1)
    assert not np.allclose(first, vectors)
    with pytest.raises(UserError, match="embedding layer 3 is outside the model's blocks 0..2"):
        question_embeddings(model, prompts, layer=3)
