"""Figures of dynamic power sampling: the accuracy-compute Pareto front of the stopping
rules, the controllers' calibration and the GBDT's feature importances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from powersampling.plots.charts import accuracy_points, reliability_diagrams
from powersampling.plots.drawing import (
    check_columns,
    figure_legend,
    message_figure,
    palette,
    panel_figure,
    panel_keys,
    save_figure,
)


def plot_dps_pareto(table: pd.DataFrame, path) -> None:
    """Accuracy against tokens per question on the held-out questions: each controller's τ
    sweep as a line (the τ chosen on training questions ringed), each baseline and the
    oracle as a point with its CI; one panel per (task, model)."""
    columns = ["task", "model", "policy", "tau", "kind", "chosen", "accuracy", "accuracy_low",
               "accuracy_high", "tokens_per_question"]  # fmt: skip
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no DPS results")
    panels = panel_keys(table, ["task", "model"])
    colours = palette(list(dict.fromkeys(table["policy"])))
    fig, axes = panel_figure(len(panels), sharey=True)
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)]
        for policy, group in rows.groupby("policy", sort=False):
            colour = colours[policy]
            if group["kind"].iloc[0] == "controller":
                group = group.sort_values("tokens_per_question")
                ax.plot(group["tokens_per_question"], group["accuracy"], marker=".", ms=4,
                        color=colour, label=policy)  # fmt: skip
                best = group[group["chosen"]]
                ax.scatter(best["tokens_per_question"], best["accuracy"], s=90,
                           facecolors="none", edgecolors=colour)  # fmt: skip
            else:
                accuracy_points(ax, group.rename(columns={"accuracy_low": "ci_low",
                                 "accuracy_high": "ci_high"}), "tokens_per_question", colour,
                                 fmt="D" if policy == "oracle" else "s", label=policy)  # fmt: skip
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel("tokens decoded per question")
        ax.set_ylabel("accuracy (majority vote)")
    figure_legend(fig, axes, "stopping rule")
    save_figure(fig, path)


def plot_dps_calibration(table: pd.DataFrame, path) -> None:
    """Reliability diagram of each controller's p̂_enough on the held-out decisions: the
    observed rate of "enough" against the mean p̂ per bin (marker area ~ decisions)."""
    labels = ("predicted p(enough)", "observed share enough", "controller")
    reliability_diagrams(table, "controller", "mean_p_enough", "enough_rate", labels, path,
                          "no controller results")  # fmt: skip


def plot_dps_importance(table: pd.DataFrame, path) -> None:
    """GBDT's permutation importances on the held-out decisions (drop in ROC-AUC when a
    feature is shuffled), the twelve largest per (task, model)."""
    columns = ["task", "model", "feature", "importance_mean", "importance_std"]
    check_columns(table, columns, "table")
    table = table.dropna(subset=["importance_mean"])
    if table.empty:
        return message_figure(path, "no permutation importances (no GBDT, or one label only)")
    panels = panel_keys(table, ["task", "model"])
    fig, axes = panel_figure(len(panels), sharey=False)
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)]
        rows = rows.nlargest(12, "importance_mean").iloc[::-1]
        y = np.arange(len(rows))
        ax.barh(y, rows["importance_mean"], xerr=rows["importance_std"], capsize=2,
                color=sns.color_palette("colorblind")[0])  # fmt: skip
        ax.set_yticks(y, rows["feature"], fontsize="small")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel("drop in ROC-AUC when shuffled")
    save_figure(fig, path)
