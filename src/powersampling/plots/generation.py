"""Figures of the generation metrics (tables of :mod:`powersampling.metrics`): accuracy,
log p and tokens per method, the compute frontier, difficulty, temperature, MH acceptance,
pass@k and the samplers' per-stage traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from powersampling.plots.charts import grouped_bars, model_method_lines
from powersampling.plots.drawing import (
    PLAIN_NUMBERS,
    check_columns,
    figure_legend,
    message_figure,
    palette,
    panel_figure,
    save_figure,
)


def plot_accuracy_by_method(table: pd.DataFrame, path) -> None:
    """Accuracy per method with bootstrap CI error bars; one panel per task, colour by model."""
    check_columns(table, ["task", "model", "method", "accuracy", "ci_low", "ci_high"], "table")
    if table.empty:
        return message_figure(path, "no accuracy results")
    grouped_bars(table, "accuracy", "accuracy", path, errors=("ci_low", "ci_high"), sharey=True)


def plot_logp_by_method(table: pd.DataFrame, path) -> None:
    """Mean log p (base model, T=1) of the answers per method: how far each sampler sharpens."""
    check_columns(table, ["task", "model", "method", "mean_logp"], "table")
    if table.empty:
        return message_figure(path, "no log-probability results")
    errors = ("logp_ci_low", "logp_ci_high") if "logp_ci_low" in table else None
    grouped_bars(table, "mean_logp", "mean log p(answer)", path, errors=errors)


def plot_tokens_by_method(table: pd.DataFrame, path) -> None:
    """Tokens decoded per sample (MCMC proposals included): the compute price of each method."""
    check_columns(table, ["task", "model", "method", "mean_tokens_decoded"], "table")
    if table.empty:
        return message_figure(path, "no token counts")
    errors = (
        ("tokens_decoded_ci_low", "tokens_decoded_ci_high")
        if "tokens_decoded_ci_low" in table
        else None
    )
    grouped_bars(
        table, "mean_tokens_decoded", "tokens decoded per sample", path, errors=errors, log=True
    )


def plot_accuracy_vs_compute(table: pd.DataFrame, path) -> None:
    """Accuracy against tokens decoded per answer (MCMC proposals and SMC particles
    included), one point per (model, method) with CIs on both axes, one panel per task: the
    compute frontier."""
    _versus_compute(table, "accuracy", "ci_low", "ci_high", "accuracy", path)


def plot_logp_vs_compute(table: pd.DataFrame, path) -> None:
    """Mean log p of the answers (base model) against tokens decoded per answer, one point
    per (model, method) with CIs on both axes, one panel per task: what the compute buys in
    likelihood, the quantity power sampling sharpens."""
    _versus_compute(
        table, "mean_logp", "logp_ci_low", "logp_ci_high", "mean log p of the answer", path
    )


def _versus_compute(table: pd.DataFrame, y: str, low: str, high: str, ylabel: str, path) -> None:
    columns = ["task", "model", "method", y, low, high, "mean_tokens_decoded"]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no accuracy results")
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["method"].unique()))
    markers = dict(zip(sorted(table["model"].unique()), "osD^v<>", strict=False))
    fig, axes = panel_figure(len(tasks), sharey=y == "accuracy")
    for ax, task in zip(axes, tasks, strict=True):
        for row in table[table["task"] == task].itertuples():
            x, value = float(row.mean_tokens_decoded), float(getattr(row, y))
            xerr = None
            if "tokens_decoded_ci_low" in table:
                xerr = np.clip(
                    [[x - row.tokens_decoded_ci_low], [row.tokens_decoded_ci_high - x]], 0, None
                )
            ax.errorbar(
                x,
                value,
                xerr=xerr,
                yerr=np.clip([[value - getattr(row, low)], [getattr(row, high) - value]], 0, None),
                fmt=markers.get(row.model, "o"),
                color=colours[row.method],
                capsize=3,
                label=row.method if len(markers) == 1 else f"{row.model} / {row.method}",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task)
        ax.set_xlabel("tokens decoded per answer")
        ax.set_ylabel(ylabel)
    figure_legend(fig, axes, "method" if len(markers) == 1 else "model / method")
    save_figure(fig, path)


def plot_accuracy_by_difficulty(table: pd.DataFrame, path) -> None:
    """Accuracy against the problems' difficulty with CI bands, one line per (model, method),
    one panel per task (tasks without a difficulty are absent from the table)."""
    columns = ["task", "model", "method", "difficulty", "accuracy", "ci_low", "ci_high"]
    check_columns(table, columns, "table")
    if table.empty:
        return message_figure(path, "no task records a difficulty")
    model_method_lines(
        table, "difficulty", "accuracy", "difficulty", "accuracy", path, band=("ci_low", "ci_high")
    )


def plot_accuracy_vs_temperature(table: pd.DataFrame, path) -> None:
    """Accuracy against sampling temperature, with greedy at T=0 and power methods as lines.

    Temperature-sampler rows form a line with a CI band per model; greedy is a point at
    T=0; every other sampler (power, dps) is a dashed horizontal line labelled with its
    alpha, in the model's colour.
    """
    columns = ["task", "model", "method", "sampler", "temperature", "alpha", "accuracy"]
    check_columns(table, [*columns, "ci_low", "ci_high"], "table")
    if table.empty:
        return message_figure(path, "no accuracy results")
    tasks = sorted(table["task"].unique())
    colours = palette(sorted(table["model"].unique()))
    fig, axes = panel_figure(len(tasks))
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    swept, deterministic = _temperature_roles(table["sampler"])
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for model, colour in colours.items():
            sub = rows[rows["model"] == model]
            temp = sub[sub["sampler"].isin(swept)].sort_values("temperature")
            if len(temp):
                t = temp["temperature"].to_numpy(dtype=float)
                label = f"{model}: {', '.join(sorted(swept))}"
                ax.plot(t, temp["accuracy"], "o-", color=colour, label=label)
                ax.fill_between(t, temp["ci_low"], temp["ci_high"], color=colour, alpha=0.2)
            for _, row in sub[sub["sampler"].isin(deterministic)].iterrows():
                yerr = [[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]]
                ax.errorbar(
                    0.0,
                    row.accuracy,
                    yerr=np.clip(yerr, 0, None),
                    fmt="s",
                    color=colour,
                    capsize=3,
                    label=f"{model}: {row.sampler}",
                )
            others = sub[~sub["sampler"].isin(swept | deterministic)]
            for i, (_, row) in enumerate(others.iterrows()):
                alpha = "" if pd.isna(row.alpha) else f", α={row.alpha:g}"
                ax.axhline(
                    row.accuracy,
                    color=colour,
                    linestyle=styles[i % len(styles)],
                    label=f"{model}: {row.method}{alpha}",
                )
        ax.set_title(task)
        ax.set_xlabel("temperature")
        ax.set_ylabel("accuracy")
    figure_legend(fig, axes)
    save_figure(fig, path)


def _temperature_roles(samplers: pd.Series) -> tuple[set[str], set[str]]:
    """The samplers that take a temperature ``T`` (a line along T) and the deterministic
    ones (a point at T = 0), as their classes declare them."""
    from powersampling.samplers import SAMPLERS, sampler_class

    known = [sampler_class(s) for s in samplers.dropna().unique() if s in SAMPLERS]
    return (
        {c.name for c in known if "T" in c.PARAMS},
        {c.name for c in known if c.DETERMINISTIC},
    )


def plot_acceptance_by_block(acc_table: pd.DataFrame, path) -> None:
    """Metropolis–Hastings acceptance rate against block index, one line per (model, method)."""
    check_columns(acc_table, ["task", "model", "method", "block", "acceptance_rate"], "acc_table")
    if acc_table.empty:
        return message_figure(path, "no power-sampling runs")
    model_method_lines(acc_table, "block", "acceptance_rate", "block", "MH acceptance rate", path)


def plot_pass_at_k(passk_table: pd.DataFrame, path) -> None:
    """Unbiased pass@k against k, one line per (model, method), one panel per task."""
    check_columns(passk_table, ["task", "model", "method", "k", "pass_at_k"], "passk_table")
    if passk_table.empty:
        return message_figure(path, "no pass@k results")
    log_x = passk_table["k"].max() >= 8
    model_method_lines(passk_table, "k", "pass_at_k", "k", "pass@k", path, log_x=log_x)


def plot_sampler_trace(trace_table: pd.DataFrame, path) -> None:
    """Every sampler's per-stage diagnostics: the mean of each traced field against the stage,
    one panel per (sampler, field), one line per (task, model, method).

    Reads :func:`powersampling.metrics.sampler_trace_table`, so a new sampler's trace fields
    appear here without any change to this function.
    """
    columns = ["task", "model", "method", "sampler", "stage", "field", "mean"]
    check_columns(trace_table, columns, "trace_table")
    if trace_table.empty:
        return message_figure(path, "no sampler traces")
    table = trace_table.assign(
        panel=trace_table["sampler"].astype(str) + ": " + trace_table["field"].astype(str),
        line=trace_table["task"].astype(str)
        + " / "
        + trace_table["model"].astype(str)
        + " / "
        + trace_table["method"].astype(str),
    )
    panels = list(dict.fromkeys(table.sort_values(["sampler", "field"])["panel"]))
    colours = palette(sorted(table["line"].unique()))
    fig, axes = panel_figure(len(panels), sharey=False)
    for ax, panel in zip(axes, panels, strict=True):
        for line, sub in table[table["panel"] == panel].groupby("line", sort=True):
            sub = sub.sort_values("stage")
            ax.plot(sub["stage"], sub["mean"], "o-", markersize=3, color=colours[line], label=line)
        stages = table.loc[table["panel"] == panel, "stage"]
        first, last = int(stages.min()), int(stages.max())
        ax.set_xlim(first - 0.5, last + 0.5)
        if last - first < 12:  # a tick per stage (MaxNLocator puts fractions on short axes)
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel)
        ax.set_xlabel("stage")
        ax.set_ylabel("mean over answers")
    figure_legend(fig, axes, "task / model / method")
    save_figure(fig, path)
