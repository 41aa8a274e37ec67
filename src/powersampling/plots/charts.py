"""Chart shapes that several figures draw: grouped bars, one line per (model, method),
accuracy points with CI error bars, and reliability diagrams."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from powersampling.plots.drawing import (
    PLAIN_NUMBERS,
    check_columns,
    figure_legend,
    message_figure,
    palette,
    panel_figure,
    panel_keys,
    save_figure,
)


def grouped_bars(
    table: pd.DataFrame, value: str, ylabel: str, path, *, errors=None, log=False, sharey=False
):
    """Bars of ``value`` per method, one panel per task, colour by model (with optional CIs)."""
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["model"].unique()))
    # y not shared by default: log p and tokens differ in scale by task
    fig, axes = panel_figure(len(tasks), sharey=sharey)
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        methods = list(dict.fromkeys(rows["method"]))
        width = 0.8 / len(colours)
        for m, (model, colour) in enumerate(colours.items()):
            sub = rows[rows["model"] == model].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (m - (len(colours) - 1) / 2) * width
            y = sub[value].to_numpy(dtype=float)
            yerr = None
            if errors is not None:
                low, high = (sub[c].to_numpy(dtype=float) for c in errors)
                yerr = np.vstack([y - low, high - y]).clip(min=0)
            ax.bar(x, y, width, yerr=yerr, capsize=3, color=colour, label=model)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(task)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(PLAIN_NUMBERS)
            ax.yaxis.set_minor_formatter(NullFormatter())
    figure_legend(fig, axes, "model")
    save_figure(fig, path)


def model_method_lines(table, x, y, xlabel, ylabel, path, *, log_x=False, band=None) -> None:
    """One line per (model, method), one panel per task; ``band``: (low, high) columns of
    a shaded interval around each line."""
    table = table.assign(line=table["model"].astype(str) + " / " + table["method"].astype(str))
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["line"].unique()))
    fig, axes = panel_figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for line, sub in rows.groupby("line", sort=True):
            sub = sub.sort_values(x)
            ax.plot(sub[x], sub[y], "o-", markersize=3, color=colours[line], label=line)
            if band is not None:
                ax.fill_between(sub[x], sub[band[0]], sub[band[1]], color=colours[line], alpha=0.15)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks and k are counts
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    figure_legend(fig, axes, "model / method")
    save_figure(fig, path)


def accuracy_points(ax, rows: pd.DataFrame, x: str, colour, **style) -> None:
    """Accuracy points at ``x`` with their CI as error bars."""
    y = rows["accuracy"].to_numpy(dtype=float)
    yerr = np.vstack([y - rows["ci_low"], rows["ci_high"] - y]).astype(float).clip(min=0)
    ax.errorbar(rows[x].to_numpy(dtype=float), y, yerr=yerr, color=colour, capsize=3, **style)


def reliability_diagrams(table, by, x, y, labels, path, empty) -> None:
    """Observed rate ``y`` against mean prediction ``x`` per bin, one line per ``by``
    value, one panel per (task, model); marker area grows with the bin's ``n``; the dotted
    diagonal is perfect calibration. ``labels``: (x label, y label, legend title)."""
    check_columns(table, ["task", "model", by, x, y, "n"], "table")
    if table.empty:
        return message_figure(path, empty)
    panels = panel_keys(table, ["task", "model"])
    colours = palette(list(dict.fromkeys(table[by])))
    fig, axes = panel_figure(len(panels), sharey=True)
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)]
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for name, group in rows.groupby(by, sort=False):
            group = group.sort_values(x)
            ax.plot(group[x], group[y], color=colours[name], lw=1)
            area = 8 + 150 * group["n"] / rows["n"].max()
            ax.scatter(group[x], group[y], s=area, color=colours[name], alpha=0.7, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    figure_legend(fig, axes, labels[2])
    save_figure(fig, path)
