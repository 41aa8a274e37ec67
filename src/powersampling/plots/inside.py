"""Figures from inside the model (tables of :mod:`powersampling.interp.tables`): truncated
models' accuracy, the LogitLens, the two side by side, and activation patching."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from powersampling.plots.charts import accuracy_points
from powersampling.plots.drawing import (
    PANEL_HEIGHT,
    PANEL_WIDTH,
    PLAIN_NUMBERS,
    check_columns,
    figure_legend,
    message_figure,
    palette,
    panel_figure,
    panel_keys,
    save_figure,
)


def _truncation_lines(ax, rows: pd.DataFrame, colours: dict, both_kinds: bool) -> None:
    """Truncated accuracy against layers kept, one line per (method, keep_last)."""
    truncated = rows[~rows["is_full"].astype(bool)]
    for (method, keep_last), sub in truncated.groupby(["method", "keep_last"], sort=True):
        label = method
        if both_kinds:
            label += ", L + last block" if keep_last else ", first L blocks"
        style = "-" if keep_last or not both_kinds else "--"
        sub = sub.sort_values("layers_kept")
        accuracy_points(
            ax, sub, "layers_kept", colours[method], fmt="o", ls=style, markersize=4, label=label
        )


def _full_points(ax, rows: pd.DataFrame, colours: dict) -> None:
    """The full model's accuracy as hollow markers at its depth, labelled "full"."""
    full = rows[rows["is_full"].astype(bool) & rows["layers_kept"].notna()]
    for method, sub in full.groupby("method", sort=True):
        accuracy_points(ax, sub, "layers_kept", colours[method], fmt="o", mfc="white", markersize=7)
    if len(full):
        top = full.loc[full["accuracy"].astype(float).idxmax()]
        ax.annotate(
            "full",
            (float(top["layers_kept"]), float(top["accuracy"])),
            textcoords="offset points",
            xytext=(-6, 6),
            ha="right",
            fontsize="small",
        )
        ax.plot([], [], "o", mfc="white", mec="grey", color="grey", label="full model")


def plot_truncation_accuracy(table: pd.DataFrame, path) -> None:
    """Accuracy against the decoder blocks a truncated model keeps, one line per method with
    CI error bars, one panel per (task, full model); the full model is a hollow marker at its
    depth."""
    columns = ["task", "base_model", "method", "layers_kept", "keep_last", "is_full"]
    check_columns(table, [*columns, "accuracy", "ci_low", "ci_high"], "table")
    if table.empty:
        return message_figure(path, "no truncated models")
    colours = palette(sorted(table["method"].unique()))
    both_kinds = table["keep_last"].dropna().nunique() > 1
    panels = panel_keys(table, ["task", "base_model"])
    fig, axes = panel_figure(len(panels))
    for ax, (task, base) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["base_model"] == base)]
        _truncation_lines(ax, rows, colours, both_kinds)
        _full_points(ax, rows, colours)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} / {base}")
        ax.set_xlabel("layers kept (L)")
        ax.set_ylabel("accuracy")
    figure_legend(fig, axes, "method")
    save_figure(fig, path)


def _symlog_threshold(values: pd.Series) -> float:
    """Where a symlog KL axis turns linear: the smallest clearly positive KL, floored to a
    power of ten (the last layer's KL is 0 and cannot go on a log axis)."""
    positive = values[values > 1e-9]
    if positive.empty:
        return 1.0
    return float(np.clip(10 ** math.floor(math.log10(positive.min())), 1e-4, 1.0))


def _lens_panel(ax, rows: pd.DataFrame, metric: str, colours: dict) -> None:
    """One LogitLens metric against the layer, one line per model with its CI band."""
    for model, sub in rows.groupby("model", sort=True):
        sub = sub.sort_values("layer")
        layer = sub["layer"].to_numpy(dtype=float)
        ax.plot(layer, sub[metric], "o-", markersize=3, color=colours[model], label=model)
        low, high = sub[f"{metric}_ci_low"], sub[f"{metric}_ci_high"]
        ax.fill_between(layer, low, high, color=colours[model], alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_logit_lens(table: pd.DataFrame, path) -> None:
    """LogitLens per layer: for each task a row of KL(p_final ‖ p_layer) (symlog: the last
    layer's KL is 0) and below it a row of top-1 agreement with the model's output, with CI
    bands, one column per position kind (last prompt token, answer), one line per model."""
    metrics = [("kl", "KL(p_final ‖ p_layer), nats"), ("top1_agree", "top-1 agreement")]
    columns = ["task", "model", "layer", "position"]
    columns += [f"{m}{s}" for m, _ in metrics for s in ("", "_ci_low", "_ci_high")]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no LogitLens results")
    kinds = {"last_prompt": 0, "answer": 1}  # the last prompt token first
    tasks = sorted(table["task"].unique())
    positions = sorted(table["position"].unique(), key=lambda p: (kinds.get(p, 2), p))
    colours = palette(sorted(table["model"].unique()))
    threshold = _symlog_threshold(table["kl"].astype(float))
    nrows, ncols = 2 * len(tasks), len(positions)
    fig = Figure(figsize=(PANEL_WIDTH * ncols, PANEL_HEIGHT * nrows), layout="constrained")
    with sns.axes_style("whitegrid"):
        grid = fig.subplots(nrows, ncols, sharey="row", squeeze=False)
    for t, task in enumerate(tasks):
        for col, position in enumerate(positions):
            rows = table[(table["task"] == task) & (table["position"] == position)]
            kl_ax, top1_ax = grid[2 * t, col], grid[2 * t + 1, col]
            if rows.empty:  # e.g. no answer rows: every answer was empty
                kl_ax.set_visible(False)
                top1_ax.set_visible(False)
                continue
            _lens_panel(kl_ax, rows, "kl", colours)
            kl_ax.set_yscale("symlog", linthresh=threshold)
            kl_ax.yaxis.set_major_formatter(PLAIN_NUMBERS)
            kl_ax.set_ylim(bottom=0)
            kl_ax.set_title(f"{task}: {position.replace('_', ' ')}")
            _lens_panel(top1_ax, rows, "top1_agree", colours)
            top1_ax.set_ylim(-0.02, 1.02)
            top1_ax.set_xlabel("layer (block output, 0-based)")
            for ax, (_, ylabel) in zip((kl_ax, top1_ax), metrics, strict=True):
                ax.set_ylabel(ylabel if col == 0 else "")
    figure_legend(fig, list(grid.ravel()), "model")
    save_figure(fig, path)


def plot_lens_vs_truncation(table: pd.DataFrame, path) -> None:
    """Truncated models' accuracy (left axis, CI error bars, one line per method) against
    layers kept L, beside the full model's LogitLens KL at the last prompt token after block
    L-1 (right axis, dashed), one panel per (task, full model)."""
    columns = ["task", "base_model", "method", "layers_kept", "keep_last", "accuracy"]
    check_columns(table, [*columns, "ci_low", "ci_high", "kl_last_prompt"], "table")
    if table.empty:
        return message_figure(path, "no truncated models with a LogitLens of their full model")
    colours = palette(sorted(table["method"].unique()))
    both_kinds = table["keep_last"].dropna().nunique() > 1
    panels = panel_keys(table, ["task", "base_model"])
    fig, axes = panel_figure(len(panels))
    twins = []
    for ax, (task, base) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["base_model"] == base)]
        _truncation_lines(ax, rows.assign(is_full=False), colours, both_kinds)
        if "full_accuracy" in rows:
            full = rows.drop_duplicates("method").dropna(subset=["full_accuracy"])
            for full_row in full.itertuples():
                ax.axhline(full_row.full_accuracy, color=colours[full_row.method], ls=":", lw=1)
            if len(full):
                ax.plot([], [], ls=":", color="grey", label="full model's accuracy")
        twin = ax.twinx()
        twin.grid(False)
        lens = rows.drop_duplicates("layers_kept").sort_values("layers_kept")
        x, kl = lens["layers_kept"].to_numpy(dtype=float), lens["kl_last_prompt"].astype(float)
        kl_err = None
        if {"kl_last_prompt_ci_low", "kl_last_prompt_ci_high"} <= set(lens.columns):
            kl_err = np.vstack(
                [kl - lens["kl_last_prompt_ci_low"], lens["kl_last_prompt_ci_high"] - kl]
            ).astype(float)
            kl_err = np.nan_to_num(kl_err).clip(min=0)
        twin.errorbar(
            x, kl, yerr=kl_err, fmt="s--", color="black", markersize=4, capsize=2,
            label="full model's KL after block L-1\n(LogitLens, last prompt token)",
        )  # fmt: skip
        twin.set_ylim(bottom=0)
        twin.set_ylabel("KL(p_final ‖ p_L-1), nats")
        twins.append(twin)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} / {base}")
        ax.set_xlabel("layers kept (L)")
        ax.set_ylabel("truncated model's accuracy")
    figure_legend(fig, [*axes, *twins])
    save_figure(fig, path)


def plot_patching_heatmap(table: pd.DataFrame, path) -> None:
    """Mean normalized patching effect per layer (rows) and prompt position relative to the
    answer position (columns), diverging colours centred at 0, one panel per (task, model)."""
    check_columns(table, ["task", "model", "layer", "offset", "effect"], "table")
    if table.empty:
        return message_figure(path, "no activation patching results")
    panels = panel_keys(table, ["task", "model"])
    effects = table["effect"].astype(float)
    limit = float(np.nanmax(np.abs(effects))) if effects.notna().any() else 1.0
    limit = limit if limit > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    fig, axes = panel_figure(len(panels), sharey=False)
    mesh = None
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)]
        layers = np.arange(int(rows["layer"].max()) + 1)
        offsets = np.arange(int(rows["offset"].min()), int(rows["offset"].max()) + 1)
        grid = rows.pivot_table(index="layer", columns="offset", values="effect", dropna=False)
        grid = grid.reindex(index=layers, columns=offsets).to_numpy(dtype=float)
        mesh = ax.pcolormesh(
            np.append(offsets, offsets[-1] + 1) - 0.5,
            np.append(layers, layers[-1] + 1) - 0.5,
            np.ma.masked_invalid(grid),
            cmap=cmap,
            vmin=-limit,
            vmax=limit,
        )
        ax.grid(False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel("prompt position − answer position")
        ax.set_ylabel("layer (block output, 0-based)")
    fig.colorbar(mesh, ax=axes, label="normalized effect (clean = 1, corrupted = 0)")
    save_figure(fig, path)


def plot_patching_by_layer(table: pd.DataFrame, path) -> None:
    """Per layer, the effect of patching the changed number's position (CI band), and the
    mean over pairs of each pair's best position (dashed, CI band), one panel per
    (task, model)."""
    lines = [
        ("changed_effect", "-", "at the changed position"),
        ("max_effect", "--", "at each pair's best position"),
    ]
    columns = ["task", "model", "layer"]
    columns += [f"{m}{s}" for m, _, _ in lines for s in ("", "_ci_low", "_ci_high")]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no activation patching results")
    colours = dict(zip([m for m, _, _ in lines], sns.color_palette("colorblind", 2), strict=True))
    panels = panel_keys(table, ["task", "model"])
    fig, axes = panel_figure(len(panels))
    for ax, (task, model) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["model"] == model)].sort_values("layer")
        layer = rows["layer"].to_numpy(dtype=float)
        for metric, style, label in lines:
            colour = colours[metric]
            ax.plot(layer, rows[metric], marker="o", ls=style, markersize=3, color=colour,
                    label=label)  # fmt: skip
            low, high = rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"]
            ax.fill_between(layer, low, high, color=colour, alpha=0.15)
        for level in (0.0, 1.0):  # corrupted and clean runs
            ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel("layer (block output, 0-based)")
        ax.set_ylabel("normalized effect (clean = 1)")
    figure_legend(fig, axes, "patched position")
    save_figure(fig, path)
