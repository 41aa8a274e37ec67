"""Figures of temperature reliability (tables of :mod:`powersampling.reliability`):
accuracy, compliance and consistency per setting, confidence, calibration and the failure
taxonomy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from powersampling.plots.charts import reliability_diagrams
from powersampling.plots.drawing import (
    check_columns,
    figure_legend,
    message_figure,
    palette,
    panel_figure,
    panel_keys,
    save_figure,
)


def _settings_order(rows: pd.DataFrame) -> list[str]:
    """Settings from greedy (T = 0) to the hottest."""
    firsts = rows.drop_duplicates("method").sort_values(["temperature", "method"])
    return list(firsts["method"])


def plot_reliability(table: pd.DataFrame, path) -> None:
    """Strict accuracy, lenient accuracy and compliance per setting with CIs, and
    consistency (the share of problems every run answers alike), one panel per task, one
    colour per model (sparse and dense side by side)."""
    columns = ["task", "model", "method", "temperature", "accuracy_strict",
               "accuracy_strict_low", "accuracy_strict_high", "accuracy_lenient",
               "accuracy_lenient_low", "accuracy_lenient_high", "compliance",
               "compliance_low", "compliance_high", "answer_agreement"]  # fmt: skip
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no reliability results")
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["model"].unique()))
    styles = {"accuracy_strict": "-", "accuracy_lenient": "--", "compliance": ":"}
    labels = {"accuracy_strict": "strict", "accuracy_lenient": "lenient",
              "compliance": "compliance"}  # fmt: skip
    fig, axes = panel_figure(len(tasks), sharey=True)
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        order = _settings_order(rows)
        for model, colour in colours.items():
            sub = rows[rows["model"] == model].set_index("method").reindex(order)
            x = np.arange(len(order))
            for metric, style in styles.items():
                y = sub[metric].to_numpy(dtype=float)
                ax.plot(x, y, ls=style, marker="o", ms=3, color=colour,
                        label=f"{model}: {labels[metric]}")  # fmt: skip
                ax.fill_between(x, sub[f"{metric}_low"], sub[f"{metric}_high"],
                                color=colour, alpha=0.1)  # fmt: skip
            # consistency: the share of problems answered alike by every run (not greedy's)
            ax.plot(x, sub["answer_agreement"], ls="-.", marker="s", ms=3, color=colour,
                    label=f"{model}: same answer in all runs")  # fmt: skip
        ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_title(task)
        ax.set_ylabel("share")
    figure_legend(fig, axes, "model: measure")
    save_figure(fig, path)


def plot_reliability_confidence(table: pd.DataFrame, path) -> None:
    """Confidence profiles: mean and minimum token log p at T = 1 per setting, one panel per
    task, one colour per model (the sampled distribution's log q is in the table)."""
    columns = ["task", "model", "method", "temperature", "logp_t1_mean", "logp_t1_min"]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no reliability results")
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["model"].unique()))
    fig, axes = panel_figure(len(tasks), sharey=False)
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        order = _settings_order(rows)
        for model, colour in colours.items():
            sub = rows[rows["model"] == model].set_index("method").reindex(order)
            x = np.arange(len(order))
            ax.plot(x, sub["logp_t1_mean"], marker="o", color=colour, label=f"{model}: mean")
            ax.plot(x, sub["logp_t1_min"], marker="v", ls="--", color=colour,
                    label=f"{model}: least likely token")  # fmt: skip
        ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
        ax.set_title(task)
        ax.set_ylabel("token log p, model at T = 1")
    figure_legend(fig, axes, "model: confidence")
    save_figure(fig, path)


def plot_reliability_calibration(table: pd.DataFrame, path) -> None:
    """Reliability diagrams: strict accuracy against confidence (exp mean token log p at
    T = 1) in equal-mass bins, one line per setting, one panel per (task, model)."""
    labels = ("confidence: exp(mean token log p), T = 1", "accuracy (strict)", "setting")
    reliability_diagrams(table, "method", "mean_confidence", "accuracy", labels, path,
                          "no reliability results")  # fmt: skip


def plot_failures(table: pd.DataFrame, path) -> None:
    """The failure taxonomy as stacked rates per setting (share of all generations), one
    panel per (task, model); what is left to 1 is right."""
    columns = ["task", "model", "method", "category", "rate"]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no reliability results")
    panels = panel_keys(table, ["task", "model"])
    categories = list(dict.fromkeys(table["category"]))
    colours = dict(zip(categories, sns.color_palette("colorblind", len(categories)), strict=True))
    fig, axes = panel_figure(len(panels), sharey=True)
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)]
        order = list(dict.fromkeys(rows["method"]))
        grid = rows.pivot(index="method", columns="category", values="rate").reindex(order)
        bottom = np.zeros(len(order))
        for category in categories:
            values = grid[category].fillna(0).to_numpy(dtype=float)
            ax.bar(np.arange(len(order)), values, bottom=bottom, color=colours[category],
                   label=category)  # fmt: skip
            bottom += values
        ax.set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{task} / {model}")
        ax.set_ylabel("share of generations")
    figure_legend(fig, axes, "failure (first rule that matches)")
    save_figure(fig, path)
