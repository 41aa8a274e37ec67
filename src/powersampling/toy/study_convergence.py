"""Study 2: how fast the MH power sampler reaches π_α, exactly, from its Markov kernels.

Total-variation distance between the sampler's exact output distribution and π_α at the
final cap, against the number of MH steps per block, for several block sizes, with and
without the stop-at-EOS rule.
"""

from __future__ import annotations

import itertools

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from powersampling.toy.enumerate import (
    enumerate_answers,
    power_distribution,
    proposal_distribution,
    sampler_distribution,
    total_variation,
)
from powersampling.toy.figures import save_figure


def convergence(
    model,
    prompt: list[int],
    eos_token_ids: list[int],
    cap: int,
    alpha: float = 4.0,
    block_sizes: list[int] | None = None,
    steps: list[int] = (0, 1, 2, 4, 8, 16, 32, 64),
    proposal_temperature: float | None = None,
) -> pd.DataFrame:
    """Exact TV distance to π_α (at the final cap) of the sampler's output vs MH steps.

    Computed with the exact Markov kernels, no sampling. Columns: alpha, block_size,
    stop_at_eos, mcmc_steps, tv_to_power; plus tv_temperature, the distance of plain
    temperature sampling (the proposal) for reference.
    """
    temperature = 1.0 / alpha if proposal_temperature is None else proposal_temperature
    sup = enumerate_answers(model, prompt, eos_token_ids, cap, proposal_temperature=temperature)
    pi = power_distribution(sup, alpha)
    tv_q = total_variation(proposal_distribution(sup), pi)
    rows = []
    for block, stop, n in itertools.product(block_sizes or [cap], [True, False], steps):
        dist = sampler_distribution(sup, alpha, block, n, stop_at_eos=stop)
        rows.append(
            {
                "alpha": float(alpha),
                "block_size": int(block),
                "stop_at_eos": stop,
                "mcmc_steps": int(n),
                "tv_to_power": total_variation(dist, pi),
                "tv_temperature": tv_q,
            }
        )
    return pd.DataFrame(rows)


def plot_convergence(table: pd.DataFrame, path) -> None:
    """TV distance to π_α against MH steps per block, one line per block size."""
    fig = Figure(figsize=(8.4, 3.6), layout="constrained")
    for i, stop in enumerate([True, False]):
        ax = fig.add_subplot(1, 2, i + 1)
        sub = table[table["stop_at_eos"] == stop].copy()
        sub["block size"] = sub["block_size"].astype(str)
        sns.lineplot(data=sub, x="mcmc_steps", y="tv_to_power", hue="block size", marker="o", ax=ax)
        ax.axhline(sub["tv_temperature"].iloc[0], ls="--", c="grey", lw=0.8)
        ax.set(
            xscale="symlog",
            xlim=(0, max(1, sub["mcmc_steps"].max())),
            xlabel="MH steps per block",
            ylabel="TV to π_α",
            title="stop at EOS" if stop else "finished chains kept",
        )
    save_figure(fig, path)
