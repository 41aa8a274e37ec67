"""SMC power sampling is exact in the limit and its Ẑ is unbiased: checks by enumeration.

Toy model: the random Qwen2 of tests/tiny_qwen.py (vocabulary {0, 1, EOS=2}, answers of
at most 4 tokens: 31 answers). Every test runs M independent SMC runs of one prompt in one
batch, with fixed seeds (so results are deterministic).

* G-tests (rare cells pooled to expected counts >= 5) reject at p < 1e-3: the false-alarm
  rate of each, for a sampler that draws exactly from the law tested.
* The Rao–Blackwellised output law: the mean over runs of each run's normalised particle
  weights. Its expectation is exactly the output's law, so its TV to π_α measures the
  sampler's bias with far less noise than counting outputs; its standard error comes from a
  bootstrap over runs.
* Ẑ: |mean Ẑ / Z − 1| < 4 standard errors (false alarm about 6e-5 under the normal
  approximation), where each test also checks its power: 4 standard errors are under 5 %
  of Z, and the naive exp(mean log Ẑ) (biased low by Jensen's inequality) is rejected.
"""

import numpy as np
import pytest
from tiny_qwen import ALPHA, CAP, EOS, PROMPT, REJECT

from powersampling.samplers.smc import SMCSampler
from powersampling.toy.enumerate import (
    enumerate_answers,
    goodness_of_fit,
    power_distribution,
    proposal_distribution,
    total_variation,
)

RUNS = 2000
BOOTSTRAP = 200


def run(engine, seed: int, runs: int = RUNS, **params):
    sampler = SMCSampler(engine, **{"alpha": ALPHA, "max_new_tokens": CAP, **params})
    seeds = [seed * 1_000_000 + i for i in range(runs)]
    return sampler.sample_swarms([PROMPT] * runs, chain_seeds=seeds)


def output_counts(swarms, support) -> np.ndarray:
    index = support.index()
    cells = [index[s.answers[s.chosen]] for s in swarms]  # KeyError: not an answer
    return np.bincount(cells, minlength=len(support))


def particle_laws(swarms, support) -> np.ndarray:
    """[runs, answers]: each run's normalised weights, summed per answer."""
    index = support.index()
    laws = np.zeros((len(swarms), len(support)))
    for r, s in enumerate(swarms):
        for answer, w in zip(s.answers, s.weights, strict=True):
            laws[r, index[answer]] += w
    return laws


def rb_tv(swarms, support, target) -> tuple[float, float]:
    """TV of the Rao–Blackwellised output law to ``target``, and its bootstrap SE."""
    laws = particle_laws(swarms, support)
    rng = np.random.default_rng(0)
    boot = [
        total_variation(laws[rng.integers(0, len(laws), len(laws))].mean(0), target)
        for _ in range(BOOTSTRAP)
    ]
    return total_variation(laws.mean(0), target), float(np.std(boot))


def test_one_particle_is_the_proposal(engine, support):
    """N = 1: nothing to weigh or resample, the output is a plain draw from q."""
    swarms = run(engine, seed=1, particles=1)
    counts = output_counts(swarms, support)
    assert goodness_of_fit(counts, proposal_distribution(support))[2] > REJECT
    assert goodness_of_fit(counts, power_distribution(support, ALPHA))[2] < REJECT  # power


def test_distance_to_the_target_shrinks_with_the_particles(engine, support):
    """TV(output law, π_α) falls as N = 1, 4, 16, 64, each step by more than 3 SE, and is
    below 0.02 at N = 64 (SMC's bias is O(1/N); measured about 0.003 here, against 0.29
    for the proposal). At N = 64 the drawn outputs also pass the G-test against π_α."""
    pi = power_distribution(support, ALPHA)
    tvs = {}
    for n in [1, 4, 16, 64]:
        swarms = run(engine, seed=2, runs=RUNS if n < 64 else 1000, particles=n)
        tvs[n] = rb_tv(swarms, support, pi)
    assert tvs[1][0] == pytest.approx(total_variation(proposal_distribution(support), pi), abs=0.03)
    for small, large in [(1, 4), (4, 16), (16, 64)]:
        (tv_s, se_s), (tv_l, se_l) = tvs[small], tvs[large]
        assert tv_l < tv_s - 3 * np.hypot(se_s, se_l), (small, large, tvs)
    assert tvs[64][0] < 0.02
    counts = output_counts(swarms, support)
    assert goodness_of_fit(counts, pi)[2] > REJECT
    assert goodness_of_fit(counts, proposal_distribution(support))[2] < REJECT  # power


@pytest.mark.parametrize(
    "params",
    [
        {"ess_threshold": 0.0},  # importance sampling, no resampling
        {"ess_threshold": 1.0},  # resampling at every step
        {"ess_threshold": 1.0, "alpha_ramp_tokens": 3},  # a ramp: catch-up terms
    ],
    ids=["never", "always", "ramp"],
)
def test_normalizing_constant_is_unbiased(engine, support, params):
    z = float(np.exp(ALPHA * support.logp).sum())
    swarms = run(engine, seed=3, particles=4, **params)
    log_z = np.array([s.log_z for s in swarms])
    z_hat = np.exp(log_z)
    se = z_hat.std(ddof=1) / np.sqrt(len(z_hat))
    assert abs(z_hat.mean() - z) < 4 * se
    assert 4 * se < 0.05 * z  # power: a 5 % bias would be caught
    if params["ess_threshold"] == 1.0:
        assert sum(s.resamples for s in swarms) > len(swarms)
    # Power: the naive estimate exp(E log Ẑ) is biased low, and this test sees it.
    naive = np.exp(log_z.mean())
    assert abs(naive - z) > 4 * se


def test_ramp_keeps_the_final_target(engine, support):
    """An α ramp over the first 3 tokens changes the intermediate targets, not the last."""
    pi = power_distribution(support, ALPHA)
    swarms = run(engine, seed=4, runs=1000, particles=64, ess_threshold=0.5, alpha_ramp_tokens=3)
    tv, se = rb_tv(swarms, support, pi)
    assert tv < 0.02
    assert goodness_of_fit(output_counts(swarms, support), pi)[2] > REJECT


def test_alpha_one_without_resampling_gives_the_base_distribution(model, engine):
    """α = 1 with the proposal at temperature 1: every weight is 1, the output is p."""
    support1 = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1.0)
    p = np.exp(support1.logp)
    swarms = run(engine, seed=5, alpha=1.0, particles=4, ess_threshold=0.0)
    assert all(s.resamples == 0 and np.allclose(s.weights, 0.25) for s in swarms)
    counts = output_counts(swarms, support1)
    assert goodness_of_fit(counts, p)[2] > REJECT
    assert goodness_of_fit(counts, power_distribution(support1, 3.0))[2] < REJECT  # power


def test_top_k_proposal_targets_the_restricted_power_distribution(model, engine):
    """With proposal_top_k = 2 the target is p^α over the answers q can produce."""
    support_k = enumerate_answers(
        model, PROMPT, [EOS], CAP, proposal_temperature=1 / ALPHA, top_k=2
    )
    pi_k = power_distribution(support_k, ALPHA)
    swarms = run(engine, seed=6, runs=1000, particles=64, proposal_top_k=2)
    tv, _ = rb_tv(swarms, support_k, pi_k)  # KeyError if an answer left the top-k support
    assert tv < 0.02
    assert goodness_of_fit(output_counts(swarms, support_k), pi_k)[2] > REJECT
