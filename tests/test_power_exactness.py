"""The power sampler is exact: its answers follow the exactly enumerated distribution.

Toy model: a random Qwen2 with vocabulary {0, 1, EOS=2}, answers of at most 4 tokens
(31 answers; tests/tiny_qwen.py). Thousands of independent chains run in one batch; a
G-test compares their final answers with the exact distribution (rare cells pooled to
expected counts >= 5). False-alarm rate: a test rejects at p < 1e-3; seeds are fixed, so
results are deterministic. Power: the same test rejects token-level temperature-1/α sampling.
"""

import numpy as np
from tiny_qwen import ALPHA, CAP, EOS, N_CHAINS, PROMPT, REJECT

from powersampling.samplers.power import PowerSampler
from powersampling.seeding import torch_generator
from powersampling.toy.enumerate import (
    enumerate_answers,
    goodness_of_fit,
    power_distribution,
    proposal_distribution,
    sampler_distribution,
    total_variation,
)


def counts_of(outputs, support) -> np.ndarray:
    index = support.index()
    cells = [index[tuple(o["completion_ids"])] for o in outputs]  # KeyError: not an answer
    return np.bincount(cells, minlength=len(support))


def run_chains(engine, seed, n=N_CHAINS, **params):
    sampler = PowerSampler(engine, max_new_tokens=CAP, **params)
    return sampler.sample([PROMPT] * n, torch_generator(seed))


def test_one_block_follows_power_distribution(engine, support):
    steps = 20
    pi = power_distribution(support, ALPHA)
    exact = sampler_distribution(support, ALPHA, CAP, steps)
    # After 20 steps the chain is exactly within 2e-3 TV of π_α, far below what 2000
    # chains can resolve, so testing against π_α itself is meaningful.
    assert total_variation(exact, pi) < 2e-3
    out = run_chains(engine, seed=1, alpha=ALPHA, block_size=CAP, mcmc_steps=steps)
    counts = counts_of(out, support)
    assert goodness_of_fit(counts, pi)[2] > REJECT
    assert goodness_of_fit(counts, exact)[2] > REJECT
    assert all(o["proposals"] == steps for o in out)
    assert 0.2 < np.mean([o["acceptance_rate"] for o in out]) < 1.0


def test_temperature_sampling_is_rejected(engine, support):
    """Power of the test: token-level temperature 1/α is not π_α, and the test says so."""
    pi = power_distribution(support, ALPHA)
    q = proposal_distribution(support)
    assert total_variation(q, pi) > 0.2
    ext = engine.extend(
        [PROMPT] * N_CHAINS, CAP, temperature=1 / ALPHA, generator=torch_generator(2)
    )
    counts = counts_of([{"completion_ids": t} for t in ext.tokens], support)
    assert goodness_of_fit(counts, q)[2] > REJECT  # it is what it should be ...
    assert goodness_of_fit(counts, pi)[2] < REJECT  # ... and visibly not π_α


def test_too_few_steps_are_rejected(engine, support):
    """Two MH steps are not enough here; the test detects the bias the exact kernel predicts."""
    pi = power_distribution(support, ALPHA)
    exact = sampler_distribution(support, ALPHA, CAP, 2)
    assert total_variation(exact, pi) > 0.1
    out = run_chains(engine, seed=3, alpha=ALPHA, block_size=CAP, mcmc_steps=2)
    counts = counts_of(out, support)
    assert goodness_of_fit(counts, exact)[2] > REJECT
    assert goodness_of_fit(counts, pi)[2] < REJECT


def test_several_blocks_follow_the_exact_procedure(engine, support):
    """Blocks of 2 tokens (caps 2 then 4), 20 steps each.

    Chains that end with EOS after the first block stop there, so the output is the
    procedure's exact distribution (by the Markov kernels), not π_α at the final cap;
    chains still running in the last block end at π_α restricted to the final cap.
    """
    steps, block = 20, 2
    pi = power_distribution(support, ALPHA)
    parts = sampler_distribution(support, ALPHA, block, steps, by_block=True)
    last = parts[-1] / parts[-1].sum()
    assert total_variation(last, pi) < 5e-3
    out = run_chains(engine, seed=4, alpha=ALPHA, block_size=block, mcmc_steps=steps)
    counts = counts_of(out, support)
    assert goodness_of_fit(counts, parts.sum(axis=0))[2] > REJECT
    reached = [o for o in out if len(o["sampler_trace"]) == 2]
    assert 150 < len(reached) < 450  # about 14% of 2000 chains run the second block
    assert goodness_of_fit(counts_of(reached, support), pi)[2] > REJECT
    assert goodness_of_fit(counts_of(reached, support), proposal_distribution(support))[2] < REJECT
    for o in out:
        assert o["proposals"] == steps * len(o["sampler_trace"])
        assert (o["finish_reason"] == "eos") == (o["completion_ids"][-1] == EOS)


def test_alpha_one_without_early_stop_gives_the_base_distribution(model, engine):
    """α = 1 (proposal at T = 1), blocks of one token, finished chains kept: output is p."""
    support1 = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1.0)
    p = np.exp(support1.logp)
    assert abs(p.sum() - 1) < 1e-9
    exact = sampler_distribution(support1, 1.0, 1, 2, stop_at_eos=False)
    assert total_variation(exact, p) < 1e-12
    out = run_chains(engine, seed=5, alpha=1.0, block_size=1, mcmc_steps=2, stop_at_eos=False)
    counts = counts_of(out, support1)
    assert goodness_of_fit(counts, p)[2] > REJECT
    assert goodness_of_fit(counts, power_distribution(support1, 3.0))[2] < REJECT
    assert all(len(o["sampler_trace"]) == CAP for o in out)  # every chain ran every block


def test_early_stop_biases_towards_short_answers_even_at_alpha_one(model, engine):
    """With the published stopping rule the output is the exact procedure distribution,
    which is not p: chains that ended early cannot move on, the others start the next block
    conditioned on not having ended, and MH pulls them back to short answers."""
    support1 = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1.0)
    p = np.exp(support1.logp)
    exact = sampler_distribution(support1, 1.0, 1, 2)
    assert total_variation(exact, p) > 0.1
    assert exact[support1.lengths == 1].sum() > p[support1.lengths == 1].sum()
    out = run_chains(engine, seed=5, alpha=1.0, block_size=1, mcmc_steps=2)
    counts = counts_of(out, support1)
    assert goodness_of_fit(counts, exact)[2] > REJECT
    assert goodness_of_fit(counts, p)[2] < REJECT


def test_several_blocks_without_early_stop_follow_power_distribution(engine, support):
    steps = 20
    pi = power_distribution(support, ALPHA)
    exact = sampler_distribution(support, ALPHA, 1, steps, stop_at_eos=False)
    assert total_variation(exact, pi) < 1e-3
    out = run_chains(
        engine, seed=8, n=1000, alpha=ALPHA, block_size=2, mcmc_steps=steps, stop_at_eos=False
    )
    counts = counts_of(out, support)
    assert goodness_of_fit(counts, pi)[2] > REJECT
    assert goodness_of_fit(counts, sampler_distribution(support, ALPHA, 2, steps))[2] < REJECT


def test_top_k_proposal_follows_restricted_power_distribution(model, engine):
    """With top-k proposals the chain lives on the answers q can produce."""
    support_k = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1.0, top_k=2)
    pi = power_distribution(support_k, ALPHA)
    exact = sampler_distribution(support_k, ALPHA, CAP, 10)
    out = run_chains(
        engine,
        seed=6,
        n=1000,
        alpha=ALPHA,
        block_size=CAP,
        mcmc_steps=10,
        proposal_temperature=1.0,
        proposal_top_k=2,
    )
    counts = counts_of(out, support_k)
    assert goodness_of_fit(counts, exact)[2] > REJECT
    assert goodness_of_fit(counts, proposal_distribution(support_k))[2] < REJECT
    assert total_variation(exact, pi) < 0.02  # 10 steps: close to π_α on this support


def test_greedy_accept_matches_its_exact_kernel(engine, support):
    steps = 5
    exact = sampler_distribution(support, ALPHA, CAP, steps, greedy_accept=True)
    out = run_chains(
        engine, seed=7, n=1000, alpha=ALPHA, block_size=CAP, mcmc_steps=steps, greedy_accept=True
    )
    counts = counts_of(out, support)
    assert goodness_of_fit(counts, exact)[2] > REJECT
    assert goodness_of_fit(counts, power_distribution(support, ALPHA))[2] < REJECT
