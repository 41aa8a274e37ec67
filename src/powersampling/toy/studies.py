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
4. :func:`frontier`: the compute frontier: TV distance to π_α against the tokens decoded
   per answer, for the MH power sampler (exact, from its kernels), Sequential Monte Carlo
   (estimated from many runs of the real sampler) and temperature 1/α.

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

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from powersampling.errors import UserError
from powersampling.io import write_atomic
from powersampling.seeding import derive_seed
from powersampling.toy.enumerate import (
    Support,
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


# ---------------------------------------------------------------------------- study 4

FRONTIER_COLUMNS = [
    "sampler",
    "alpha",
    "block_size",
    "mcmc_steps",
    "particles",
    "ess_threshold",
    "tokens_decoded",
    "tv_to_power",
    "tv_se",
    "tv_noise",
    "z_ratio",
    "resamples",
    "runs",
    "exact",
]


def _smc_law(swarms, support: Support, pi: np.ndarray, log_z: float, bootstrap: int, rng):
    """Rao–Blackwellised estimate of SMC's output law from its ``swarms`` (one per run).

    Run r gives m_r = Σ_i w_i δ(x_i), its weighted particles; the output is one draw from
    m_r, so the output law is exactly E[m_r], estimated by the mean m̄ over runs (far less
    noisy than counting outputs). The bootstrap resamples whole runs: ``tv_se`` is the
    standard deviation of TV(m̄*, π), ``tv_noise`` the mean of TV(m̄*, m̄): the TV the
    estimate's own noise gives, i.e. the floor below which a distance is not resolved.
    ``z_ratio`` is the mean over runs of Ẑ / Z (1 for an unbiased estimate of Z).
    """
    index = support.index()
    runs = len(swarms)
    laws = np.zeros((runs, len(support)))
    for r, swarm in enumerate(swarms):
        try:
            cells = [index[tuple(a)] for a in swarm.answers]
        except KeyError as err:
            raise AssertionError(f"SMC returned {err.args[0]}, not an answer at the cap") from err
        np.add.at(laws[r], cells, swarm.weights)
    law = laws.mean(axis=0)
    counts = rng.multinomial(runs, np.full(runs, 1.0 / runs), size=bootstrap)  # [B, runs]
    boot = counts @ laws / runs  # [B, S]: the estimate from each resample of the runs
    return {
        "tokens_decoded": float(np.mean([s.tokens_decoded for s in swarms])),
        "tv_to_power": total_variation(law, pi),
        "tv_se": float(np.std([total_variation(b, pi) for b in boot], ddof=1)),
        "tv_noise": float(np.mean([total_variation(b, law) for b in boot])),
        "z_ratio": float(np.mean(np.exp([s.log_z - log_z for s in swarms]))),
        "resamples": float(np.mean([s.resamples for s in swarms])),
    }


def frontier(
    model,
    prompt: list[int],
    eos_token_ids: list[int],
    cap: int,
    alpha: float = 4.0,
    block_sizes: list[int] | None = None,
    steps: list[int] = (0, 1, 2, 4, 8, 16, 32),
    particles: list[int] = (1, 2, 4, 8, 16, 32, 64),
    ess_thresholds: list[float] = (0.5, 1.0),
    runs: int = 1000,
    seed: int = 0,
    bootstrap: int = 200,
) -> pd.DataFrame:
    """The compute frontier: TV distance to π_α (at the final cap) against tokens decoded.

    One row per setting of three samplers, all with the proposal q at temperature 1/α:

    * ``mh``: the block-wise MH power sampler (stop at EOS), for every block size and MH
      step count; TV and the expected ``tokens_decoded`` per answer exactly, from the kernels
      (:func:`~powersampling.toy.enumerate.sampler_distribution` with ``with_cost``).
    * ``smc``: :class:`~powersampling.samplers.smc.SMCSampler` with N ``particles`` and ESS
      threshold κ, run ``runs`` times on the prompt (chain seeds derived from ``seed``); TV
      of the Rao–Blackwellised estimate of its output law (see :func:`_smc_law`) with a
      bootstrap standard error over runs (``bootstrap`` resamples), ``tv_noise`` (the TV its
      noise alone gives), ``z_ratio`` (mean Ẑ/Z), mean resamplings per run, and the mean
      ``tokens_decoded`` of a run (all its particles: the compute of one answer).
    * ``temperature``: q alone; TV(q, π_α) and the expected answer length under q, exactly.

    Columns: :data:`FRONTIER_COLUMNS`; settings that do not apply to a sampler are missing
    (block_size, mcmc_steps, particles: nullable integers; the rest NaN), ``tv_se`` and
    ``tv_noise`` are 0 for the exact rows (``exact`` true).
    """
    from powersampling.engine import DecodingEngine
    from powersampling.samplers.smc import SMCSampler

    sup = enumerate_answers(model, prompt, eos_token_ids, cap, proposal_temperature=1.0 / alpha)
    pi = power_distribution(sup, alpha)
    q = proposal_distribution(sup)
    blank = {
        "alpha": float(alpha),
        "block_size": None,
        "mcmc_steps": None,
        "particles": None,
        "ess_threshold": np.nan,
        "tv_se": 0.0,
        "tv_noise": 0.0,
        "z_ratio": np.nan,
        "resamples": np.nan,
        "runs": None,
        "exact": True,
    }
    rows = [
        {
            **blank,
            "sampler": "temperature",
            "tokens_decoded": float(q @ sup.lengths),
            "tv_to_power": total_variation(q, pi),
        }
    ]
    for block, n in itertools.product(block_sizes or [cap], steps):
        dist, tokens = sampler_distribution(sup, alpha, block, n, with_cost=True)
        rows.append(
            {
                **blank,
                "sampler": "mh",
                "block_size": int(block),
                "mcmc_steps": int(n),
                "tokens_decoded": tokens,
                "tv_to_power": total_variation(dist, pi),
            }
        )
    if particles and ess_thresholds:
        if runs < 2:
            raise UserError(f"the frontier study needs at least 2 SMC runs, got {runs}")
        engine = DecodingEngine(model, eos_token_ids=eos_token_ids, pad_token_id=eos_token_ids[0])
        log_z = float(np.logaddexp.reduce(alpha * sup.logp))  # log Z = log Σ p^α
        rng = np.random.default_rng(derive_seed(seed, "frontier", "bootstrap"))
        for kappa, n in itertools.product(ess_thresholds, particles):
            smc = SMCSampler(
                engine,
                alpha=alpha,
                particles=int(n),
                ess_threshold=float(kappa),
                resample_every=1,
                max_new_tokens=cap,
                proposal_temperature=None,
                proposal_top_k=None,
                alpha_ramp_tokens=0,
            )
            seeds = [derive_seed(seed, "frontier", int(n), float(kappa), r) for r in range(runs)]
            swarms = smc.sample_swarms([list(prompt)] * runs, chain_seeds=seeds)
            rows.append(
                {
                    **blank,
                    "sampler": "smc",
                    "particles": int(n),
                    "ess_threshold": float(kappa),
                    "runs": int(runs),
                    "exact": False,
                    **_smc_law(swarms, sup, pi, log_z, bootstrap, rng),
                }
            )
    table = pd.DataFrame(rows)[FRONTIER_COLUMNS]
    for column in ("block_size", "mcmc_steps", "particles", "runs"):
        table[column] = table[column].astype("Int64")
    return table


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


def plot_frontier(table: pd.DataFrame, path) -> None:
    """TV distance to π_α against tokens decoded per answer (log-log): one line per MH
    block size (along MH steps), one per SMC ESS threshold κ (along particles N, with ±1
    standard error bars, and its noise floor dotted), and the temperature-1/α point."""
    fig = Figure(figsize=(7.4, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    mh = table[table["sampler"] == "mh"]
    smc = table[table["sampler"] == "smc"]
    blocks = sorted(mh["block_size"].dropna().unique())
    kappas = sorted(smc["ess_threshold"].dropna().unique())
    markers = itertools.cycle(["o", "^", "D", "v", "P", "X"])
    for colour, block in zip(sns.color_palette("crest", len(blocks)), blocks, strict=True):
        sub = mh[mh["block_size"] == block].sort_values("mcmc_steps")
        ax.plot(
            sub["tokens_decoded"],
            sub["tv_to_power"],
            marker=next(markers),
            ms=4,
            c=colour,
            label=f"MH, block {block} ({sub['mcmc_steps'].min()}–{sub['mcmc_steps'].max()} steps)",
        )
    for k, (colour, kappa) in enumerate(
        zip(sns.color_palette("flare", len(kappas)), kappas, strict=True)
    ):
        sub = smc[smc["ess_threshold"] == kappa].sort_values("particles")
        ax.errorbar(
            sub["tokens_decoded"],
            sub["tv_to_power"],
            yerr=sub["tv_se"],
            marker="s",
            ms=4,
            c=colour,
            capsize=2,
            label=f"SMC, κ = {kappa:g} (N = {sub['particles'].min()}–{sub['particles'].max()})",
        )
        ax.plot(sub["tokens_decoded"], sub["tv_noise"], ls=":", lw=1, c=colour)
        if k == 0:  # name the particle counts once
            for row in sub.itertuples():
                ax.annotate(
                    f"N={row.particles}",
                    (row.tokens_decoded, row.tv_to_power),
                    xytext=(3, 4),
                    textcoords="offset points",
                    fontsize=7,
                )
    if len(smc):
        ax.plot([], [], ls=":", lw=1, c="grey", label="SMC noise floor (estimate's own TV)")
    temp = table[table["sampler"] == "temperature"]
    ax.plot(
        temp["tokens_decoded"],
        temp["tv_to_power"],
        ls="none",
        marker="*",
        ms=12,
        c="black",
        label="temperature 1/α",
    )
    values = pd.concat([table["tv_to_power"], smc["tv_noise"]])
    if (values > 0).all():  # a log axis; error bars that reach zero run off its bottom
        ax.set(yscale="log", ylim=(0.5 * values.min(), 1.5 * values.max()))
    alpha = table["alpha"].iloc[0] if len(table) else float("nan")
    ax.set(
        xscale="log",
        xlabel="tokens decoded per answer",
        ylabel="TV to π_α",
        title=f"Compute frontier, α = {alpha:g}",
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    _save(fig, path)


# ---------------------------------------------------------------------------- registry


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
