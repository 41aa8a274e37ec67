"""Study 1: power sampling rescales log-probability gaps by α; token-level temperature does not.

The log-probability gap between two answers is scaled by exactly α under π_α, but not
under token-level temperature 1/α (whose per-token renormalisation depends on the prefix).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from powersampling.toy.enumerate import enumerate_answers, power_distribution
from powersampling.toy.figures import save_figure


def _label(answer: tuple[int, ...]) -> str:
    return " ".join(str(t) for t in answer)


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
    save_figure(fig, path)
