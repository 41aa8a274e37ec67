"""Exact enumeration: supports, distributions and the power sampler's Markov kernels."""

import numpy as np
import pytest

from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.toy.enumerate import (
    enumerate_answers,
    goodness_of_fit,
    mh_kernel,
    power_distribution,
    proposal_distribution,
    random_tiny_model,
    restrict,
    sampler_distribution,
    total_variation,
)

PROMPT, EOS = [0, 1], 2


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(3, seed=4, init_std=0.25)


@pytest.fixture(scope="module")
def support(model):
    return enumerate_answers(model, PROMPT, [EOS], 4, proposal_temperature=0.5)


def test_support_is_every_answer_up_to_the_cap(support):
    # EOS answers of 1..4 tokens (1 + 2 + 4 + 8) plus the 16 four-token answers without EOS
    assert len(support) == 31
    assert len(set(support.answers)) == 31
    for a, eos in zip(support.answers, support.ends_with_eos, strict=True):
        assert eos == (a[-1] == EOS)
        assert EOS not in a[:-1]
        assert eos or len(a) == 4
    assert np.exp(support.logp).sum() == pytest.approx(1.0, abs=1e-9)
    assert proposal_distribution(support).sum() == pytest.approx(1.0, abs=1e-9)


def test_log_probs_agree_with_the_engine(model, support):
    """Enumeration (full forward) and the engine (teacher forcing with padding) agree."""
    engine = DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)
    conts = [list(a) for a in support.answers]
    logp, logq = engine.score([PROMPT] * len(conts), conts, temperature=0.5)
    assert np.allclose([float(x.sum()) for x in logp], support.logp, atol=1e-5)
    assert np.allclose([float(x.sum()) for x in logq], support.logq, atol=1e-5)


def test_restrict_equals_enumerating_at_the_smaller_cap(model, support):
    small = enumerate_answers(model, PROMPT, [EOS], 2, proposal_temperature=0.5)
    cut = restrict(support, 2)
    assert sorted(cut.answers) == sorted(small.answers)
    by = small.index()
    for a, lp in zip(cut.answers, cut.logp, strict=True):
        assert lp == pytest.approx(small.logp[by[a]], abs=1e-9)
    with pytest.raises(UserError):
        restrict(support, 5)


def test_top_k_support_only_has_answers_q_can_produce(model):
    sup = enumerate_answers(model, PROMPT, [EOS], 4, proposal_temperature=1.0, top_k=2)
    assert 1 <= len(sup) < 31
    assert proposal_distribution(sup).sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.exp(sup.logp).sum() < 1.0)  # p leaks to answers outside the top-k


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_power_distribution_is_stationary_and_reversible(support, alpha):
    pi = power_distribution(support, alpha)
    assert np.allclose(pi, np.exp(alpha * support.logp) / np.exp(alpha * support.logp).sum())
    kernel = mh_kernel(support, alpha)
    assert np.all(kernel >= -1e-15)
    assert np.allclose(kernel.sum(axis=1), 1.0)
    flow = pi[:, None] * kernel
    assert np.allclose(flow, flow.T, atol=1e-15)  # detailed balance
    assert np.allclose(pi @ kernel, pi, atol=1e-14)
    # and the chain converges to it from the proposal distribution
    assert total_variation(sampler_distribution(support, alpha, 4, 200), pi) < 1e-6


def test_overlap_only_acceptance_is_not_stationary(support):
    """The published rule (overlapping suffix parts only, no length factor) breaks balance.

    Rebuild the kernel with that acceptance on the same proposals: π_α is not its fixed point.
    """
    alpha = 2.0
    pi = power_distribution(support, alpha)
    n = len(support)
    kernel = np.zeros((n, n))
    for x, a in enumerate(support.answers):
        length = len(a)
        for i in range(length):
            for y, b in enumerate(support.answers):
                if len(b) <= i or b[:i] != a[:i]:
                    continue
                q_fwd = np.exp(support.cum_logq[y][-1] - support.cum_logq[y][i])
                m = min(len(a), len(b))  # compare only positions both suffixes have
                cp, cq = support.cum_logp[x], support.cum_logq[x]
                pp, pq = support.cum_logp[y], support.cum_logq[y]
                log_r = alpha * (pp[m] - pp[i] - cp[m] + cp[i]) + (cq[m] - cq[i]) - (pq[m] - pq[i])
                kernel[x, y] += q_fwd * min(1.0, np.exp(log_r)) / length
    kernel[np.arange(n), np.arange(n)] += 1 - kernel.sum(axis=1)
    assert np.abs(pi @ kernel - pi).max() > 1e-3
    assert np.abs(pi @ mh_kernel(support, alpha) - pi).max() < 1e-14


def test_goodness_of_fit_has_the_stated_size_and_power():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.15, 0.04, 0.008, 0.002])
    pvalues = [goodness_of_fit(rng.multinomial(500, probs), probs)[2] for _ in range(200)]
    assert np.mean(np.array(pvalues) < 0.05) < 0.12  # about 5% false alarms at level 5%
    other = np.array([0.45, 0.35, 0.15, 0.04, 0.008, 0.002])
    assert goodness_of_fit(rng.multinomial(2000, other), probs)[2] < 1e-3
    assert goodness_of_fit(np.array([10, 0, 1]), np.array([0.5, 0.5, 0.0]))[2] == 0.0


def test_bad_inputs_are_user_errors(model):
    with pytest.raises(UserError):
        enumerate_answers(model, PROMPT, [EOS], 0)
    with pytest.raises(UserError):
        enumerate_answers(model, [], [EOS], 3)
    with pytest.raises(UserError):
        enumerate_answers(model, PROMPT, [EOS], 12, max_answers=100)
