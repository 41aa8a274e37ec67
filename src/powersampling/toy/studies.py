"""Toy-world studies of power sampling, computed exactly on an enumerated answer space.

Each study takes a tiny model (see :func:`powersampling.toy.enumerate.random_tiny_model`
or any small causal LM with a few-token vocabulary), a prompt, the EOS ids and a length
cap, and returns a DataFrame; each has a plotting function beside it, in its own module
(``powersampling.toy.study_{name}``), and all are importable from here.

1. :func:`power_vs_temperature`: the log-probability gap between two answers is scaled
   by exactly α under π_α, but not under token-level temperature 1/α (whose per-token
   renormalisation depends on the prefix).
2. :func:`convergence`: total-variation distance between the power sampler's exact output
   distribution (by its Markov kernels) and π_α at the final cap, against the number of
   MH steps per block, for several block sizes, with and without the stop-at-EOS rule.
3. :func:`greedy_vs_power`: the log-likelihood of the answers each method finds: greedy
   decoding, temperature 1/α, exact π_α, the power sampler after N steps, and the most
   likely answer.
4. :func:`frontier`: the compute frontier: TV distance to π_α against the tokens decoded
   per answer, for the MH power sampler (exact, from its kernels), Sequential Monte Carlo
   (estimated from many runs of the real sampler) and temperature 1/α.

:data:`STUDIES` is the one list of these studies: each name maps to the function that
computes its table from the workflow's settings (config section ``studies.exact_toy``),
its plotting function and its caption file. The workflow's ``toy_study`` rule makes
``results/studies/{name}.parquet`` and ``results/plots/study_{name}.svg`` for every entry.
Adding a study is its module (table and plot), one entry in :data:`STUDIES` and its
caption file ``reports/figures/study_{name}.rst`` (a Jinja2 template that sees
``snakemake.config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from powersampling.toy.study_convergence import convergence, plot_convergence
from powersampling.toy.study_frontier import FRONTIER_COLUMNS, frontier, plot_frontier
from powersampling.toy.study_greedy_vs_power import greedy_vs_power, plot_greedy_vs_power
from powersampling.toy.study_power_vs_temperature import (
    plot_power_vs_temperature,
    power_vs_temperature,
)

__all__ = [
    "FRONTIER_COLUMNS",
    "STUDIES",
    "Study",
    "convergence",
    "frontier",
    "greedy_vs_power",
    "plot_convergence",
    "plot_frontier",
    "plot_greedy_vs_power",
    "plot_power_vs_temperature",
    "power_vs_temperature",
]


def _power_vs_temperature(model, prompts, eos_token_ids, settings, seed: int = 0) -> pd.DataFrame:
    return power_vs_temperature(
        model, prompts[0], eos_token_ids, settings["cap"], alphas=settings["alphas"]
    )


def _convergence(model, prompts, eos_token_ids, settings, seed: int = 0) -> pd.DataFrame:
    return convergence(
        model,
        prompts[0],
        eos_token_ids,
        settings["cap"],
        alpha=max(settings["alphas"]),
        block_sizes=settings["block_sizes"],
        steps=settings["mcmc_steps"],
    )


def _greedy_vs_power(model, prompts, eos_token_ids, settings, seed: int = 0) -> pd.DataFrame:
    return greedy_vs_power(
        model, prompts, eos_token_ids, settings["cap"], alphas=settings["alphas"]
    )


def _frontier(model, prompts, eos_token_ids, settings, seed: int = 0) -> pd.DataFrame:
    return frontier(
        model,
        prompts[0],
        eos_token_ids,
        settings["cap"],
        alpha=max(settings["alphas"]),
        block_sizes=settings["block_sizes"],
        steps=settings["mcmc_steps"],
        particles=settings["smc_particles"],
        ess_thresholds=settings["smc_ess_thresholds"],
        runs=settings["smc_runs"],
        seed=seed,
    )


@dataclass(frozen=True)
class Study:
    """One exact study: its table, its figure and the figure's caption."""

    name: str
    # (model, prompts, eos_token_ids, settings of studies.exact_toy, *, seed=the study's
    # seed, for the studies that sample; default 0) -> the study's table
    compute: Callable[..., pd.DataFrame]
    plot: Callable[[pd.DataFrame, Path], None]

    @property
    def caption(self) -> str:
        """The caption file of its figure, relative to the workflow's root (Jinja2)."""
        return f"reports/figures/study_{self.name}.rst"


STUDIES: dict[str, Study] = {
    study.name: study
    for study in [
        Study("power_vs_temperature", _power_vs_temperature, plot_power_vs_temperature),
        Study("convergence", _convergence, plot_convergence),
        Study("greedy_vs_power", _greedy_vs_power, plot_greedy_vs_power),
        Study("frontier", _frontier, plot_frontier),
    ]
}
