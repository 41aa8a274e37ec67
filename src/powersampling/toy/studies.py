"""Toy-world studies of power sampling, computed exactly on an enumerated answer space.

Each study takes a tiny model (see :func:`powersampling.toy.enumerate.random_tiny_model`
or any small causal LM with a few-token vocabulary), a prompt, the EOS ids and a length
cap, and returns a DataFrame; each has a plotting function beside it.

1. :func:`power_vs_temperature`: the log-probability gap between two answers is scaled
   by exactly α under π_α, but not under token-level temperature 1/α (whose per-token
   renormalisation depends on the prefix).
2. :func:`convergence`: total-variation distance between the power sampler's exact output
   distribution (by its Markov kernels) and π_α at the final cap, against the number of
   MH steps per block, for several block sizes, with and without the stop-at-EOS rule.
3. :func:`greedy_vs_power`: the log-likelihood of the answers each method finds: greedy
   decoding, temperature 1/α, exact π_α, the power sampler after N steps, and the most
   likely answer.

:data:`STUDIES` is the one list of these studies: each name maps to the function that
computes its table from the workflow's settings (config section ``studies.exact_toy``),
its plotting function and its caption file. The workflow's ``toy_study`` rule makes
``results/studies/{name}.parquet`` and ``results/plots/study_{name}.svg`` for every entry.
Adding a study is one entry in :data:`STUDIES` plus its caption file
``reports/figures/study_{name}.rst`` (a Jinja2 template that sees ``snakemake.config``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from powersampling.errors import UserError
from powersampling.io import write_atomic
from powersampling.toy.enumerate import (
    enumerate_answers,
    power_distribution,
    proposal_distribution,
    sampler_distribution,
    total_variation,
)


def _label(answer: tuple[int, ...]) -> str:
    return " ".join(str(t) for t in answer)


# ---------------------------------------------------------------------------- study 1


def power_vs_temperature(
    model,
    prompt: list[int],
    eos_token_ids: list[int],
    cap: int,
    alphas: list[float] = (2.0, 4.0),
    top_answers: int = 8,
) -> pd.DataFrame:
    """Log-probability gaps between pairs of answers under p, π_α and temperature 1/α.

    Pairs are all pairs among the ``top_answers`` most likely answers under p. Columns:
    alpha, answer_a, answer_b, gap_logp (log p(a) − log p(b)), gap_power (log π_α(a) −
    log π_α(b), exactly α·gap_logp), gap_temperature (the same under token-level
    temperature 1/α), and the ratios power_over_p and temperature_over_p.
    """
    rows = []
    for alpha in alphas:
        sup = enumerate_answers(model, prompt, eos_token_ids, cap, proposal_temperature=1.0 / alpha)
        log_pi = np.log(power_distribution(sup, alpha))
        log_t = sup.logq  # the exact sequence log-probability of temperature-1/α sampling
        top = np.argsort(-sup.logp, kind="stable")[:top_answers]
        for a, b in itertools.combinations(top, 2):
            gap = sup.logp[a] - sup.logp[b]
            rows.append(
                {
                    "alpha": float(alpha),
                    "answer_a": _label(sup.answers[a]),
                    "answer_b": _label(sup.answers[b]),
                    "gap_logp": gap,
                    "gap_power": log_pi[a] - log_pi[b],
                    "gap_temperature": log_t[a] - log_t[b],
                    "power_over_p": (log_pi[a] - log_pi[b]) / gap if gap else np.nan,
                    "temperature_over_p": (log_t[a] - log_t[b]) / gap if gap else np.nan,
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- study 2


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


# ---------------------------------------------------------------------------- study 3


@torch.no_grad()
def _greedy_answer(model, prompt, eos_token_ids, cap) -> tuple[int, ...]:
    ids = list(prompt)
    answer: list[int] = []
    for _ in range(cap):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        tok = int(logits.argmax())
        answer.append(tok)
        ids.append(tok)
        if tok in eos_token_ids:
            break
    return tuple(answer)


def greedy_vs_power(
    model,
    prompts: list[list[int]],
    eos_token_ids: list[int],
    cap: int,
    alphas: list[float] = (2.0, 4.0),
    mcmc_steps: int = 10,
    block_size: int | None = None,
) -> pd.DataFrame:
    """Log-likelihood of the answers each method finds, exactly, per prompt and α.

    Methods: ``greedy`` (its one answer), ``temperature`` (1/α), ``power`` (exact π_α),
    ``power_sampler`` (the block procedure with ``mcmc_steps`` per block), ``mode`` (the
    most likely answer). Columns: prompt, alpha, method, expected_logp (E[log p(x)]),
    p_mode (probability of returning the most likely answer), mode_logp.
    """
    if not prompts:
        raise UserError("greedy_vs_power needs at least one prompt")
    rows = []
    for k, prompt in enumerate(prompts):
        greedy = _greedy_answer(model, prompt, eos_token_ids, cap)
        for alpha in alphas:
            sup = enumerate_answers(
                model, prompt, eos_token_ids, cap, proposal_temperature=1.0 / alpha
            )
            mode = int(np.argmax(sup.logp))
            one_hot = np.zeros(len(sup))
            one_hot[mode] = 1.0
            greedy_dist = np.zeros(len(sup))
            greedy_dist[sup.index()[greedy]] = 1.0
            dists = {
                "greedy": greedy_dist,
                "temperature": proposal_distribution(sup),
                "power": power_distribution(sup, alpha),
                "power_sampler": sampler_distribution(sup, alpha, block_size or cap, mcmc_steps),
                "mode": one_hot,
            }
            for method, dist in dists.items():
                rows.append(
                    {
                        "prompt": k,
                        "alpha": float(alpha),
                        "method": method,
                        "expected_logp": float(dist @ sup.logp),
                        "p_mode": float(dist[mode]),
                        "mode_logp": float(sup.logp[mode]),
                    }
                )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- plots


def _save(fig: Figure, path) -> None:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise UserError(f"cannot tell a figure format from {str(path)!r}: use .svg, .png or .pdf")
    FigureCanvasAgg(fig)

    def writer(tmp):
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "powersampling"}):
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata={"Date": None})

    write_atomic(path, writer)


def plot_power_vs_temperature(table: pd.DataFrame, path) -> None:
    """Gap under π_α or temperature 1/α against the gap under p (one panel per α)."""
    alphas = sorted(table["alpha"].unique())
    fig = Figure(figsize=(4.2 * len(alphas), 3.8), layout="constrained")
    for i, alpha in enumerate(alphas):
        ax = fig.add_subplot(1, len(alphas), i + 1)
        sub = table[table["alpha"] == alpha]
        long = pd.concat(
            [
                pd.DataFrame({"gap_logp": sub["gap_logp"], "gap": sub[c], "distribution": name})
                for c, name in [("gap_power", "power π_α"), ("gap_temperature", "temperature 1/α")]
            ]
        )
        sns.scatterplot(data=long, x="gap_logp", y="gap", hue="distribution", ax=ax, s=18)
        lim = np.abs(sub["gap_logp"]).max()
        ax.plot([-lim, lim], [-alpha * lim, alpha * lim], ls="--", c="grey", lw=0.8)
        ax.set(title=f"α = {alpha:g}", xlabel="log p(a) − log p(b)", ylabel="log-probability gap")
    _save(fig, path)


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
    _save(fig, path)


def plot_greedy_vs_power(table: pd.DataFrame, path) -> None:
    """Expected log-likelihood of the answers of each method, per α."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    sns.barplot(data=table, x="method", y="expected_logp", hue="alpha", ax=ax, errorbar=None)
    ax.set(xlabel="", ylabel="E[log p(answer)]")
    ax.tick_params(axis="x", rotation=20)
    _save(fig, path)


# ---------------------------------------------------------------------------- registry


def _power_vs_temperature(model, prompts, eos_token_ids, settings) -> pd.DataFrame:
    return power_vs_temperature(
        model, prompts[0], eos_token_ids, settings["cap"], alphas=settings["alphas"]
    )


def _convergence(model, prompts, eos_token_ids, settings) -> pd.DataFrame:
    return convergence(
        model,
        prompts[0],
        eos_token_ids,
        settings["cap"],
        alpha=max(settings["alphas"]),
        block_sizes=settings["block_sizes"],
        steps=settings["mcmc_steps"],
    )


def _greedy_vs_power(model, prompts, eos_token_ids, settings) -> pd.DataFrame:
    return greedy_vs_power(
        model, prompts, eos_token_ids, settings["cap"], alphas=settings["alphas"]
    )


@dataclass(frozen=True)
class Study:
    """One exact study: its table, its figure and the figure's caption."""

    name: str
    # (model, prompts, eos_token_ids, settings of studies.exact_toy) -> the study's table
    compute: Callable[[Any, list[list[int]], list[int], dict[str, Any]], pd.DataFrame]
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
    ]
}
