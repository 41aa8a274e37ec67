"""Study 4: the compute frontier, TV distance to π_α against the tokens decoded per answer.

For the MH power sampler (exact, from its kernels), Sequential Monte Carlo (estimated from
many runs of the real sampler) and temperature 1/α.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from powersampling.errors import UserError
from powersampling.seeding import derive_seed
from powersampling.toy.enumerate import (
    Support,
    enumerate_answers,
    power_distribution,
    proposal_distribution,
    sampler_distribution,
    total_variation,
)
from powersampling.toy.figures import save_figure

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
    sup = enumerate_answers(model, prompt, eos_token_ids, cap, proposal_temperature=1.0 / alpha)
    pi = power_distribution(sup, alpha)
    rows = [_temperature_row(sup, pi, alpha)]
    rows += _mh_rows(sup, pi, alpha, block_sizes or [cap], steps)
    if particles and ess_thresholds:
        if runs < 2:
            raise UserError(f"the frontier study needs at least 2 SMC runs, got {runs}")
        rows += _smc_rows(
            model,
            prompt,
            eos_token_ids,
            cap,
            sup,
            pi,
            alpha=alpha,
            particles=particles,
            ess_thresholds=ess_thresholds,
            runs=runs,
            seed=seed,
            bootstrap=bootstrap,
        )
    table = pd.DataFrame(rows)[FRONTIER_COLUMNS]
    for column in ("block_size", "mcmc_steps", "particles", "runs"):
        table[column] = table[column].astype("Int64")
    return table


def _blank_row(alpha: float) -> dict:
    """A frontier row with every sampler setting missing, as an exact row (no noise)."""
    return {
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


def _temperature_row(sup: Support, pi: np.ndarray, alpha: float) -> dict:
    """The proposal q alone: TV(q, π_α) and its expected answer length, exactly."""
    q = proposal_distribution(sup)
    return {
        **_blank_row(alpha),
        "sampler": "temperature",
        "tokens_decoded": float(q @ sup.lengths),
        "tv_to_power": total_variation(q, pi),
    }


def _mh_rows(sup: Support, pi: np.ndarray, alpha: float, block_sizes, steps) -> list[dict]:
    """The MH power sampler (stop at EOS) per block size and step count, exactly."""
    rows = []
    for block, n in itertools.product(block_sizes, steps):
        dist, tokens = sampler_distribution(sup, alpha, block, n, with_cost=True)
        rows.append(
            {
                **_blank_row(alpha),
                "sampler": "mh",
                "block_size": int(block),
                "mcmc_steps": int(n),
                "tokens_decoded": tokens,
                "tv_to_power": total_variation(dist, pi),
            }
        )
    return rows


def _smc_rows(
    model,
    prompt: list[int],
    eos_token_ids: list[int],
    cap: int,
    sup: Support,
    pi: np.ndarray,
    *,
    alpha: float,
    particles: list[int],
    ess_thresholds: list[float],
    runs: int,
    seed: int,
    bootstrap: int,
) -> list[dict]:
    """SMC per ESS threshold and particle count, estimated from ``runs`` runs of the real
    sampler (:func:`_smc_law`); one bootstrap generator serves every setting, in order."""
    from powersampling.engine import DecodingEngine
    from powersampling.samplers.smc import SMCSampler

    engine = DecodingEngine(model, eos_token_ids=eos_token_ids, pad_token_id=eos_token_ids[0])
    log_z = float(np.logaddexp.reduce(alpha * sup.logp))  # log Z = log Σ p^α
    rng = np.random.default_rng(derive_seed(seed, "frontier", "bootstrap"))
    rows = []
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
                **_blank_row(alpha),
                "sampler": "smc",
                "particles": int(n),
                "ess_threshold": float(kappa),
                "runs": int(runs),
                "exact": False,
                **_smc_law(swarms, sup, pi, log_z, bootstrap, rng),
            }
        )
    return rows


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
    save_figure(fig, path)
