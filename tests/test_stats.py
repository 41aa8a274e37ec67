"""Bootstrap intervals (coverage by simulation) and the unbiased pass@k estimator."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate, stats

from powersampling.errors import UserError
from powersampling.stats import (
    bootstrap_ci,
    paired_bootstrap_diff,
    pass_at_k,
    pass_at_k_array,
)

# Coverage tests: X = number of replications whose 95% interval covers the truth. If the
# interval has its nominal coverage, X ~ Binomial(REPS, 0.95); the acceptance band below
# has a false-alarm rate of at most FALSE_ALARM. Seeds are fixed, so runs are deterministic.
REPS = 400
NOMINAL = 0.95
FALSE_ALARM = 1e-3
BAND = (
    stats.binom.ppf(FALSE_ALARM / 2, REPS, NOMINAL),
    stats.binom.isf(FALSE_ALARM / 2, REPS, NOMINAL),
)


def in_band(covered: int) -> bool:
    return BAND[0] <= covered <= BAND[1]


def coverage(intervals, truth: float) -> int:
    return sum(low <= truth <= high for _, low, high in intervals)


def clustered_sample(rng, n_problems=100, n_seeds=4):
    """Rows of n_seeds answers per problem; a problem's difficulty p_i ~ Beta(0.6, 1.4)."""
    p = rng.beta(0.6, 1.4, size=n_problems)  # mean 0.3, intra-class correlation 1/3
    values = rng.random((n_problems, n_seeds)) < p[:, None]
    clusters = np.repeat(np.arange(n_problems), n_seeds)
    return values.ravel(), clusters


# --- bootstrap_ci ---------------------------------------------------------------------


def test_row_bootstrap_covers_bernoulli_mean_at_nominal_rate():
    rng = np.random.default_rng(1)
    samples = rng.random((REPS, 200)) < 0.3
    cis = [bootstrap_ci(x, seed=i) for i, x in enumerate(samples)]
    assert in_band(coverage(cis, 0.3)), (coverage(cis, 0.3), BAND)
    # Power: an 80% interval passed off as a 95% one is caught by the same band.
    narrow = [bootstrap_ci(x, level=0.80, seed=i) for i, x in enumerate(samples)]
    assert not in_band(coverage(narrow, 0.3))


def test_cluster_bootstrap_covers_when_rows_are_correlated_and_row_bootstrap_does_not():
    rng = np.random.default_rng(2)
    data = [clustered_sample(rng) for _ in range(REPS)]
    clustered = [bootstrap_ci(v, c, seed=i) for i, (v, c) in enumerate(data)]
    assert in_band(coverage(clustered, 0.3)), (coverage(clustered, 0.3), BAND)
    # Ignoring the clusters understates the spread (design effect 2): caught by the band.
    naive = [bootstrap_ci(v, seed=i) for i, (v, _) in enumerate(data)]
    assert coverage(naive, 0.3) < BAND[0]


def test_cluster_bootstrap_on_duplicated_rows_matches_the_deduplicated_data():
    rng = np.random.default_rng(3)
    base = (rng.random(60) < 0.4).astype(float)
    values = np.repeat(base, 4)  # every problem answered identically by 4 seeds
    clusters = np.repeat([f"p{i}" for i in range(60)], 4)

    def width(ci):
        return ci[2] - ci[1]

    row = bootstrap_ci(values, n_boot=4000, seed=0)
    cluster = bootstrap_ci(values, clusters, n_boot=4000, seed=0)
    dedup = bootstrap_ci(base, n_boot=4000, seed=0)
    assert cluster[0] == pytest.approx(base.mean())
    assert width(cluster) > 1.6 * width(row)  # about sqrt(4) = 2 times wider
    assert width(cluster) == pytest.approx(width(dedup), rel=0.15)


def test_vectorised_mean_agrees_with_the_generic_statistic_path():
    rng = np.random.default_rng(4)
    values = rng.normal(size=90)
    clusters = rng.integers(0, 25, size=90)  # unequal cluster sizes
    fast = bootstrap_ci(values, clusters, n_boot=300, seed=7)
    slow = bootstrap_ci(values, clusters, n_boot=300, seed=7, statistic=lambda x: np.mean(x))
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_generic_statistic_median():
    values = np.arange(101, dtype=float)
    est, low, high = bootstrap_ci(values, n_boot=500, seed=0, statistic=np.median)
    assert est == 50.0 and low < 50.0 < high


def test_bootstrap_is_deterministic_given_the_seed():
    rng = np.random.default_rng(5)
    values = rng.normal(size=80)  # continuous, so different draws give different quantiles
    clusters = np.repeat(np.arange(20), 4)
    assert bootstrap_ci(values, clusters, seed=11) == bootstrap_ci(values, clusters, seed=11)
    assert bootstrap_ci(values, clusters, seed=11) != bootstrap_ci(values, clusters, seed=12)


def test_bootstrap_degenerate_inputs():
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([1.0, 0.0, 1.0], ["a", "a", "a"]) == pytest.approx((2 / 3,) * 3)
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    with pytest.raises(UserError, match="one label per value"):
        bootstrap_ci([1, 0, 1], ["a", "b"])
    with pytest.raises(UserError, match="level"):
        bootstrap_ci([1, 0], level=95)


# --- paired_bootstrap_diff ------------------------------------------------------------


def paired_sample(rng, n_problems=100, n_seeds=4, shift=0.5, shift_sd=0.0):
    """Two methods on the same problems; a latent difficulty d_i ~ N(0, 1) is shared.

    Method a's logit is d_i + s_i with s_i ~ N(shift, shift_sd): with shift_sd > 0 it
    helps some problems more than others, so the seeds' differences are correlated too.
    """
    d = np.repeat(rng.normal(size=n_problems), n_seeds)
    s = np.repeat(rng.normal(shift, shift_sd, size=n_problems), n_seeds)
    a = rng.random(d.size) < 1 / (1 + np.exp(-(d + s)))
    b = rng.random(d.size) < 1 / (1 + np.exp(-d))
    return a, b, np.repeat(np.arange(n_problems), n_seeds)


def true_paired_diff(shift, shift_sd):
    """E[sigmoid(d + s)] - E[sigmoid(d)]: d + s ~ N(shift, 1 + shift_sd^2), E[sigmoid(d)] = 1/2."""
    scale = math.sqrt(1 + shift_sd**2)
    value, _ = integrate.quad(
        lambda z: stats.norm.pdf(z, shift, scale) / (1 + math.exp(-z)),
        shift - 12 * scale,
        shift + 12 * scale,
    )
    return value - 0.5


def test_paired_diff_covers_at_nominal_rate_and_needs_the_clusters():
    rng = np.random.default_rng(6)
    truth = true_paired_diff(0.5, 2.5)
    data = [paired_sample(rng, n_problems=200, shift_sd=2.5) for _ in range(REPS)]
    paired = [paired_bootstrap_diff(a, b, c, seed=i) for i, (a, b, c) in enumerate(data)]
    assert in_band(coverage(paired, truth)), (coverage(paired, truth), BAND)
    # Power: treating each row as its own problem ignores the seeds' correlation.
    rows = [
        paired_bootstrap_diff(a, b, np.arange(a.size), seed=i) for i, (a, b, _) in enumerate(data)
    ]
    assert coverage(rows, truth) < BAND[0], coverage(rows, truth)


def test_paired_diff_is_narrower_than_unpaired_on_shared_difficulty():
    rng = np.random.default_rng(7)
    a, b, clusters = paired_sample(rng, n_problems=200, shift=0.3)
    diff, low, high = paired_bootstrap_diff(a, b, clusters, seed=0)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert low < diff < high
    _, a_low, a_high = bootstrap_ci(a, clusters, seed=1)
    _, b_low, b_high = bootstrap_ci(b, clusters, seed=2)
    unpaired_width = math.hypot(a_high - a_low, b_high - b_low)
    assert high - low < 0.8 * unpaired_width


def test_paired_diff_with_different_rows_per_problem():
    a = np.array([1, 1, 0, 0, 1, 0], dtype=float)
    a_clusters = np.array(["p1", "p1", "p2", "p2", "p3", "p3"])
    b = np.array([1, 0, 0], dtype=float)
    b_clusters = np.array(["p1", "p2", "p3"])
    diff, low, high = paired_bootstrap_diff(a, b, a_clusters, b_clusters, n_boot=500)
    assert diff == pytest.approx(0.5 - 1 / 3)
    assert low <= diff <= high
    same = paired_bootstrap_diff(a, a, a_clusters)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(UserError, match="same problems"):
        paired_bootstrap_diff(a, b, a_clusters, np.array(["p1", "p2", "p9"]))


# --- pass@k ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        (5, 2, 2, 7 / 10),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 9 / 10),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c < k: every 4-subset has a correct sample
        (5, 2, 5, 1.0),
        (10, 0, 3, 0.0),
        (10, 10, 1, 1.0),
        (1, 1, 1, 1.0),
        (4, 1, 2, 1 / 2),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)
    assert pass_at_k_array(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_array_broadcasts_and_agrees_with_scalar():
    n = np.array([[5], [8], [8], [3]])
    c = np.array([[2], [0], [8], [1]])
    k = np.arange(1, 4)[None, :]
    got = pass_at_k_array(n, c, k)
    assert got.shape == (4, 3)
    for i, j in itertools.product(range(4), range(3)):
        assert got[i, j] == pytest.approx(pass_at_k(n[i, 0], c[i, 0], k[0, j]), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 2000, 3, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)
    assert pass_at_k_array(n, c, k) == pytest.approx(float(exact), rel=1e-10)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exceed"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="exceed"):
        pass_at_k_array([3, 5], [1, 1], 4)
    with pytest.raises(ValueError, match="0..n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="at least 1"):
        pass_at_k(3, 1, 0)
