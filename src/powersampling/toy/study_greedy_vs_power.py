"""Study 3: the log-likelihood of the answers each method finds, exactly.

Greedy decoding, temperature 1/α, exact π_α, the power sampler after N steps, and the
most likely answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from powersampling.errors import UserError
from powersampling.toy.enumerate import (
    enumerate_answers,
    power_distribution,
    proposal_distribution,
    sampler_distribution,
)
from powersampling.toy.figures import save_figure


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


def plot_greedy_vs_power(table: pd.DataFrame, path) -> None:
    """Expected log-likelihood of the answers of each method, per α."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    sns.barplot(data=table, x="method", y="expected_logp", hue="alpha", ax=ax, errorbar=None)
    ax.set(xlabel="", ylabel="E[log p(answer)]")
    ax.tick_params(axis="x", rotation=20)
    save_figure(fig, path)
