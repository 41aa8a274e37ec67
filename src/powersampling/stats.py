"""Statistics for the metric tables: bootstrap confidence intervals and unbiased pass@k.

Rows of the same problem are correlated (several seeds or chains answer the same
question), so the honest resampling unit is the problem, not the row: ``bootstrap_ci``
and ``paired_bootstrap_diff`` resample whole clusters with replacement. The mean is
the common case and is computed for all bootstrap draws at once from per-cluster sums
and counts; any other statistic falls back to one call per draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from powersampling.errors import UserError
from powersampling.seeding import numpy_rng

# Bootstrap index matrices are drawn in chunks of at most this many entries, so that
# 1000 draws over a million clusters do not need gigabytes at once.
_MAX_CHUNK_ENTRIES = 4_000_000


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise UserError(f"confidence level must lie strictly between 0 and 1, got {level}.")
    if n_boot < 1:
        raise UserError(f"n_boot must be at least 1, got {n_boot}.")


def _cluster_codes(clusters, n: int, what: str = "clusters") -> tuple[np.ndarray, int]:
    """Map cluster labels to codes 0..n_clusters-1; rows with the same label share a code."""
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise UserError(f"{what} must have one label per value ({n}), got shape {labels.shape}.")
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1), uniques.size


def _boot_indices(rng: np.random.Generator, n_clusters: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield (chunk, n_clusters) cluster-index matrices drawn with replacement; n_boot rows."""
    chunk = max(1, _MAX_CHUNK_ENTRIES // max(n_clusters, 1))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n_clusters, size=(min(chunk, n_boot - start), n_clusters))


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values,
    clusters=None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    statistic: Callable = np.mean,
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval: ``(estimate, low, high)``.

    ``values`` are per-row numbers (booleans count as 0/1). With ``clusters`` (one label
    per row, e.g. the problem id), whole clusters are resampled with replacement and the
    statistic is taken over all rows of the drawn clusters; without, every row is its own
    cluster. The estimate is ``statistic(values)`` on the data as given.

    Empty input gives NaNs; a single cluster gives ``(estimate, estimate, estimate)``,
    because resampling one cluster cannot show any spread.
    """
    _check_level(level, n_boot)
    values = np.asarray(values, dtype=float).reshape(-1)
    n = values.size
    if n == 0:
        return (np.nan, np.nan, np.nan)
    codes, n_clusters = (np.arange(n), n) if clusters is None else _cluster_codes(clusters, n)
    estimate = float(statistic(values))
    if n_clusters == 1:
        return (estimate, estimate, estimate)

    rng = numpy_rng(seed)
    if statistic is np.mean:
        # Vectorised: the mean of a resample is (sum of drawn clusters' sums) / (their sizes).
        sums = np.bincount(codes, weights=values, minlength=n_clusters)  # (n_clusters,)
        sizes = np.bincount(codes, minlength=n_clusters).astype(float)  # (n_clusters,)
        equal = bool(np.all(sizes == sizes[0]))  # the usual case: same seeds for every problem
        boot = np.concatenate(
            [
                sums[idx].sum(1) / (sizes[0] * n_clusters if equal else sizes[idx].sum(1))
                for idx in _boot_indices(rng, n_clusters, n_boot)
            ]
        )
    else:
        # Generic statistic: gather the drawn clusters' rows, one call per draw.
        order = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[order], np.arange(n_clusters + 1))
        members = [order[starts[j] : starts[j + 1]] for j in range(n_clusters)]
        boot = np.array(
            [
                statistic(values[np.concatenate([members[j] for j in draw])])
                for idx in _boot_indices(rng, n_clusters, n_boot)
                for draw in idx
            ],
            dtype=float,
        )
    low, high = _percentiles(boot, level)
    return (estimate, low, high)


def paired_bootstrap_diff(
    a_correct,
    b_correct,
    clusters,
    b_clusters=None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` with a paired cluster-bootstrap CI.

    Both methods answered the same problems. ``clusters`` labels the rows of ``a`` (and
    of ``b`` too when ``b_clusters`` is not given, i.e. rows are aligned); ``b_clusters``
    labels the rows of ``b`` when the two methods have different numbers of rows per
    problem. Every bootstrap draw resamples one set of problems and uses it for both
    methods, so problem difficulty, shared by the two, cancels in the difference.
    Returns ``(diff, low, high)``; NaNs for empty input.
    """
    _check_level(level, n_boot)
    a = np.asarray(a_correct, dtype=float).reshape(-1)
    b = np.asarray(b_correct, dtype=float).reshape(-1)
    a_labels = np.asarray(clusters).reshape(-1)
    b_labels = a_labels if b_clusters is None else np.asarray(b_clusters).reshape(-1)
    if a_labels.shape != a.shape:
        raise UserError(
            f"clusters must have one label per value of a ({a.size}), got {a_labels.size}."
        )
    if b_labels.shape != b.shape:
        raise UserError(
            f"b's clusters must have one label per value of b ({b.size}), got {b_labels.size}."
        )
    if a.size == 0 or b.size == 0:
        return (np.nan, np.nan, np.nan)

    union = np.unique(np.concatenate([a_labels, b_labels]))
    a_codes = np.searchsorted(union, a_labels)
    b_codes = np.searchsorted(union, b_labels)
    k = union.size
    a_sizes = np.bincount(a_codes, minlength=k)
    b_sizes = np.bincount(b_codes, minlength=k)
    unpaired = union[(a_sizes == 0) | (b_sizes == 0)]
    if unpaired.size:
        raise UserError(
            f"a paired comparison needs both methods on the same problems; "
            f"{unpaired.size} appear in only one (e.g. {unpaired[0]!r})."
        )
    a_sums = np.bincount(a_codes, weights=a, minlength=k)
    b_sums = np.bincount(b_codes, weights=b, minlength=k)
    diff = float(a.mean() - b.mean())
    if k == 1:
        return (diff, diff, diff)

    rng = numpy_rng(seed)
    boot = np.concatenate(
        [
            a_sums[idx].sum(1) / a_sizes[idx].sum(1) - b_sums[idx].sum(1) / b_sizes[idx].sum(1)
            for idx in _boot_indices(rng, k, n_boot)
        ]
    )
    low, high = _percentiles(boot, level)
    return (diff, low, high)


def _check_pass_args(n, c, k) -> None:
    if np.any(n < 1):
        raise ValueError("pass@k needs at least one sample per problem (n >= 1).")
    if np.any((c < 0) | (c > n)):
        raise ValueError("the number of correct samples c must lie in 0..n.")
    if np.any(k < 1):
        raise ValueError("k must be at least 1.")
    if np.any(k > n):
        raise ValueError("k cannot exceed the number of samples n.")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which
    never forms the huge binomial coefficients.
    """
    n, c, k = int(n), int(c), int(k)
    _check_pass_args(np.array(n), np.array(c), np.array(k))
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_array(n, c, k) -> np.ndarray:
    """Vectorised :func:`pass_at_k`: ``n``, ``c``, ``k`` broadcast against each other."""
    n, c, k = np.broadcast_arrays(np.asarray(n), np.asarray(c), np.asarray(k))
    _check_pass_args(n, c, k)
    n, c, k = (x.astype(float)[..., None] for x in (n, c, k))  # (..., 1)
    # Term j of the product is 1 - k/(n-j) for j < c; terms past c are 1.
    j = np.arange(int(c.max()) if c.size else 0)  # (max_c,)
    denom = n - j  # (..., max_c), >= 1 wherever j < c <= n
    terms = np.where(j < c, 1.0 - k / np.where(j < c, denom, 1.0), 1.0)
    prod = np.prod(terms, axis=-1)
    # n - c < k means a factor with i = k (exactly zero) or below it: pass@k is 1.
    return np.where((n - c < k)[..., 0], 1.0, 1.0 - prod)
