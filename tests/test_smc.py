"""SMCSampler: parameters, records, resampling bookkeeping, reproducibility.

Exactness (the output and Ẑ against exact enumeration) is in test_smc_exactness.py.
"""

import numpy as np
import pytest
import torch

from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.samplers import get_sampler
from powersampling.samplers.smc import SMCSampler, systematic_resample
from powersampling.toy.enumerate import random_tiny_model

EOS = 5
PROMPTS = [[0, 1, 2], [3], [4, 4, 0, 1], [2, 2]]


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(6, seed=1, init_std=0.2, hidden_size=32)


@pytest.fixture(scope="module")
def engine(model):
    return DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


@pytest.fixture(scope="module")
def long_engine():
    """Answers of several tokens: EOS is made unlikely (its logit lowered by a bias of 1)."""
    model = random_tiny_model(6, seed=2, init_std=0.2, hidden_size=32)
    head = torch.nn.Linear(32, 6, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = -1.0
    model.lm_head = head
    return DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


def smc(engine, **params) -> SMCSampler:
    defaults = {"alpha": 3.0, "particles": 8, "max_new_tokens": 12}
    return SMCSampler(engine, **{**defaults, **params})


def test_defaults_and_registry(engine):
    sampler = get_sampler({"sampler": "smc"}, engine)
    assert isinstance(sampler, SMCSampler)
    p = sampler.params
    assert (p["alpha"], p["particles"], p["ess_threshold"], p["resample_every"]) == (
        4.0,
        32,
        0.5,
        1,
    )
    assert p["proposal_temperature"] == 0.25 and p["proposal_top_k"] is None
    assert p["alpha_ramp_tokens"] == 0


@pytest.mark.parametrize(
    "params",
    [{"particles": 0}, {"ess_threshold": 1.5}, {"resample_every": 0}, {"alpha": 0}, {"N": 4}],
)
def test_bad_params_are_user_errors(engine, params):
    with pytest.raises(UserError):
        SMCSampler(engine, **params)


def test_systematic_resampling():
    assert systematic_resample(np.array([0.0, 1.0, 0.0]), 0.3).tolist() == [1, 1, 1]
    assert systematic_resample(np.full(4, 0.25), 0.5).tolist() == [0, 1, 2, 3]
    w = np.array([0.05, 0.6, 0.1, 0.25])
    for u in np.linspace(0, 0.999, 7):
        counts = np.bincount(systematic_resample(w, u), minlength=4)
        # systematic resampling gives each particle floor(N w) or ceil(N w) offspring
        assert np.all(counts >= np.floor(4 * w)) and np.all(counts <= np.ceil(4 * w))


def test_records_match_teacher_forced_scores_after_resampling(long_engine):
    """Resampling at every step copies KV caches between rows; the answers' per-token log p
    and log q must still be those of the model on that exact sequence."""
    engine = long_engine
    sampler = smc(engine, ess_threshold=1.0, trace_every=1)
    swarms = sampler.sample_swarms(PROMPTS * 2, chain_seeds=list(range(8)))
    assert sum(s.resamples for s in swarms) > 40
    assert any(r.record["finish_reason"] == "eos" for r in swarms)
    records = [s.record for s in swarms]
    prompts = PROMPTS * 2
    answers = [r["completion_ids"] for r in records]
    logp, logq = engine.score(prompts, answers, temperature=sampler.temperature)
    for r, lp, lq, s in zip(records, logp, logq, swarms, strict=True):
        assert r["logp_sum"] == pytest.approx(float(lp.sum()), abs=1e-4)
        assert r["sampled_logq_sum"] == pytest.approx(float(lq.sum()), abs=1e-4)
        assert r["finish_reason"] == ("eos" if r["completion_ids"][-1] == EOS else "length")
        assert r["tokens_decoded"] == s.tokens_decoded >= len(r["completion_ids"])
        assert r["temperature"] == pytest.approx(1 / 3)
        assert r["acceptance_rate"] is None and r["proposals"] is None
        assert s.answers[s.chosen] == tuple(r["completion_ids"])
        assert s.weights.sum() == pytest.approx(1.0) and len(s.answers) == 8
        trace = r["sampler_trace"]
        assert all(set(t) == set(SMCSampler.TRACE_FIELDS) for t in trace)
        assert trace[-1]["alive"] == 0 and trace[-1]["log_z"] == pytest.approx(s.log_z)
        assert sum(t["resampled"] for t in trace) == s.resamples
        assert trace[-1]["decoded"] == s.tokens_decoded
        # (the last two records share a token when a resampling kept finished particles only)
        assert all(a["decoded"] <= b["decoded"] for a, b in zip(trace, trace[1:], strict=False))
        assert all(a["token"] < b["token"] for a, b in zip(trace[:-1], trace[1:-1], strict=False))
        assert all(1 - 1e-9 <= t["ess"] <= 8 + 1e-9 for t in trace)


def test_trace_every_thins_the_records_not_the_answers(long_engine):
    seeds = list(range(8))
    every = smc(long_engine, trace_every=1).sample_swarms(PROMPTS * 2, chain_seeds=seeds)
    thin = smc(long_engine, trace_every=5).sample_swarms(PROMPTS * 2, chain_seeds=seeds)
    for a, b in zip(every, thin, strict=True):
        assert a.record["completion_ids"] == b.record["completion_ids"]
        trace = b.record["sampler_trace"]
        assert [t["token"] for t in trace[:-1]] == [5.0, 10.0][: len(trace) - 1]
        assert sum(t["resampled"] for t in trace) == b.resamples
        assert trace[-1] == {**a.record["sampler_trace"][-1], "resampled": trace[-1]["resampled"]}


def test_tokens_decoded_counts_every_unfinished_particle(engine):
    """Without resampling the particles are independent: the decoded tokens are the sum of
    their lengths."""
    sampler = smc(engine, ess_threshold=0.0)
    for s in sampler.sample_swarms(PROMPTS, chain_seeds=[1, 2, 3, 4]):
        assert s.resamples == 0
        assert s.tokens_decoded == sum(len(a) for a in s.answers)


def test_alpha_one_at_temperature_one_never_resamples(engine):
    sampler = smc(engine, alpha=1.0, ess_threshold=1.0)
    for s in sampler.sample_swarms(PROMPTS, chain_seeds=[1, 2, 3, 4]):
        assert s.resamples == 0
        assert np.allclose(s.weights, 1 / 8)
        assert s.log_z == pytest.approx(0.0, abs=1e-9)  # Σ_x p(x) = 1


def test_an_answer_depends_on_its_seed_not_on_the_other_prompts(engine):
    """Alone, among others, reversed, or split into small batches (where finished prompts'
    rows are dropped at other times), a prompt with the same seed gives the same answer."""
    sampler = smc(engine)
    prompts = PROMPTS * 3
    seeds = list(range(50, 50 + len(prompts)))

    def key(records):
        return [
            (r["completion_ids"], r["tokens_decoded"], len(r["sampler_trace"])) for r in records
        ]

    together = sampler.sample(prompts, None, chain_seeds=seeds)
    for j in [0, 5, 11]:
        alone = sampler.sample([prompts[j]], None, chain_seeds=[seeds[j]])
        assert key(alone) == key([together[j]])
        assert alone[0]["logp_sum"] == pytest.approx(together[j]["logp_sum"], rel=1e-5)
    reversed_ = sampler.sample(prompts[::-1], None, chain_seeds=seeds[::-1])
    assert key(reversed_[::-1]) == key(together)
    small = smc(
        DecodingEngine(engine.model, eos_token_ids=[EOS], pad_token_id=EOS, max_batch_size=20)
    )
    assert key(small.sample(prompts, None, chain_seeds=seeds)) == key(together)
    again = sampler.sample(prompts, None, chain_seeds=seeds)
    assert key(again) == key(together)
    other = sampler.sample(prompts, None, chain_seeds=[s + 1000 for s in seeds])
    assert key(other) != key(together)
    with pytest.raises(UserError, match="3 chain seeds for 2 prompts"):
        sampler.sample(PROMPTS[:2], None, chain_seeds=[1, 2, 3])


def test_generator_seeds_the_streams_when_no_chain_seeds(engine):
    sampler = smc(engine)
    a = sampler.sample(PROMPTS, torch.Generator().manual_seed(3))
    b = sampler.sample(PROMPTS, torch.Generator().manual_seed(3))
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]


def test_per_prompt_budgets(engine):
    sampler = smc(engine, max_new_tokens=10)
    records = sampler.sample(PROMPTS, None, budgets=[1, 3, 10, 2], chain_seeds=[1, 2, 3, 4])
    for r, b in zip(records, [1, 3, 10, 2], strict=True):
        assert r["token_budget"] == b and 1 <= r["n_new_tokens"] <= b
        if r["n_new_tokens"] == b and r["completion_ids"][-1] != EOS:
            assert r["finish_reason"] == "length"
    with pytest.raises(UserError, match="outside 1..10"):
        sampler.sample(PROMPTS[:1], None, budgets=[11])


def test_empty_prompt_list(engine):
    assert smc(engine).sample([], None) == []
