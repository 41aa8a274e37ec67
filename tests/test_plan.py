"""The time plan: the samplers' cost models against measured tokens, the plan of a config,
the runtimes the rules ask for, the CLI, and the cost table against a run's rows.

Cost models are checked where they are exact: on a model that never emits EOS every answer
runs to the budget, so the formulas' answer length is every answer's. The measured means
are over many independent chains (fixed seeds), compared at 4 standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_qwen import PROMPT

from powersampling.engine import DecodingEngine
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
