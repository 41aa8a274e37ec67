"""Report figures drawn from the metric tables (see :mod:`powersampling.metrics`).

Every function takes a table and an output path, writes the figure atomically in the
format named by the path's suffix (``.svg``, ``.png`` or ``.pdf``) and returns nothing.
Figures are built as bare :class:`matplotlib.figure.Figure` objects on the headless Agg
canvas, never through pyplot, so they work on display-less cluster nodes, no global
figure state or style is touched, and nothing is left open.
An empty table gives a figure that says so instead of an error, so the report still
renders when, say, a config has no power-sampling methods.

:data:`FIGURES` is the one list of the workflow's report figures: each name maps to its
drawing function, the metric table it is drawn from, its report category and its caption
file. The workflow's single ``plot`` rule makes ``results/plots/{name}.svg`` for every entry.
Adding a figure is one entry in :data:`FIGURES` plus its caption file
``reports/figures/{name}.rst`` (a Jinja2 template that sees ``snakemake.config``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from powersampling.errors import UserError
from powersampling.io import write_atomic

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
PANEL_WIDTH, PANEL_HEIGHT = 4.8, 3.6
_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 400 rather than 4×10², on log axes


def _format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"cannot tell a figure format from {str(path)!r}: use .svg, .png or .pdf.")
    return FORMATS[suffix]


def _check_columns(table: pd.DataFrame, required: list[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{what} must be a pandas DataFrame, got {type(table).__name__}.")
    missing = [c for c in required if c not in table.columns]
    if missing and not table.empty:
        raise UserError(f"{what} lacks the column(s) {missing}.")


# SVG text stays text (searchable, small) and ids are salted by a constant, so the same
# table gives byte-identical figures.
_SAVE_RC = {"svg.fonttype": "none", "svg.hashsalt": "powersampling"}


def _save(fig: Figure, path) -> None:
    """Write ``fig`` atomically in the format of ``path``'s suffix."""
    fmt = _format(path)
    FigureCanvasAgg(fig)  # attach a canvas so savefig works without pyplot
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None

    def writer(tmp):
        with matplotlib.rc_context(_SAVE_RC):
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=metadata)

    write_atomic(path, writer)
    fig.clear()


def _message_figure(path, message: str) -> None:
    fig = Figure(figsize=(PANEL_WIDTH, 1.6))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    _save(fig, path)


def _panels(n: int, sharey: bool = True) -> tuple[Figure, list]:
    """A figure with ``n`` panels in rows of at most three."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(PANEL_WIDTH * ncols, PANEL_HEIGHT * nrows), layout="constrained")
    with sns.axes_style("whitegrid"):  # applies to axes created here, leaves rcParams alone
        axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(fig: Figure, axes: list, title: str | None = None) -> None:
    """One legend for all panels, outside them on the right, each label once."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            entries.values(),
            entries.keys(),
            loc="outside right upper",
            title=title,
            fontsize="small",
        )


def _palette(names) -> dict:
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))


def _grouped_bars(
    table: pd.DataFrame, value: str, ylabel: str, path, *, errors=None, log=False, sharey=False
):
    """Bars of ``value`` per method, one panel per task, colour by model (with optional CIs)."""
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["model"].unique()))
    fig, axes = _panels(len(tasks), sharey=sharey)  # log p and tokens differ in scale by task
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
            ax.yaxis.set_major_formatter(_PLAIN)
            ax.yaxis.set_minor_formatter(NullFormatter())
    _legend(fig, axes, "model")
    _save(fig, path)


def plot_accuracy_by_method(table: pd.DataFrame, path) -> None:
    """Accuracy per method with bootstrap CI error bars; one panel per task, colour by model."""
    _check_columns(table, ["task", "model", "method", "accuracy", "ci_low", "ci_high"], "table")
    if table.empty:
        return _message_figure(path, "no accuracy results")
    _grouped_bars(table, "accuracy", "accuracy", path, errors=("ci_low", "ci_high"), sharey=True)


def plot_logp_by_method(table: pd.DataFrame, path) -> None:
    """Mean log p (base model, T=1) of the answers per method: how far each sampler sharpens."""
    _check_columns(table, ["task", "model", "method", "mean_logp"], "table")
    if table.empty:
        return _message_figure(path, "no log-probability results")
    errors = ("logp_ci_low", "logp_ci_high") if "logp_ci_low" in table else None
    _grouped_bars(table, "mean_logp", "mean log p(answer)", path, errors=errors)


def plot_tokens_by_method(table: pd.DataFrame, path) -> None:
    """Tokens decoded per sample (MCMC proposals included): the compute price of each method."""
    _check_columns(table, ["task", "model", "method", "mean_tokens_decoded"], "table")
    if table.empty:
        return _message_figure(path, "no token counts")
    errors = (
        ("tokens_decoded_ci_low", "tokens_decoded_ci_high")
        if "tokens_decoded_ci_low" in table
        else None
    )
    _grouped_bars(
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
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no accuracy results")
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["method"].unique()))
    markers = dict(zip(sorted(table["model"].unique()), "osD^v<>", strict=False))
    fig, axes = _panels(len(tasks), sharey=y == "accuracy")
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
        ax.xaxis.set_major_formatter(_PLAIN)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task)
        ax.set_xlabel("tokens decoded per answer")
        ax.set_ylabel(ylabel)
    _legend(fig, axes, "method" if len(markers) == 1 else "model / method")
    _save(fig, path)


def plot_accuracy_by_difficulty(table: pd.DataFrame, path) -> None:
    """Accuracy against the problems' difficulty with CI bands, one line per (model, method),
    one panel per task (tasks without a difficulty are absent from the table)."""
    columns = ["task", "model", "method", "difficulty", "accuracy", "ci_low", "ci_high"]
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no task records a difficulty")
    _lines(
        table, "difficulty", "accuracy", "difficulty", "accuracy", path, band=("ci_low", "ci_high")
    )


def plot_accuracy_vs_temperature(table: pd.DataFrame, path) -> None:
    """Accuracy against sampling temperature, with greedy at T=0 and power methods as lines.

    Temperature-sampler rows form a line with a CI band per model; greedy is a point at
    T=0; every other sampler (power, dps) is a dashed horizontal line labelled with its
    alpha, in the model's colour.
    """
    columns = ["task", "model", "method", "sampler", "temperature", "alpha", "accuracy"]
    _check_columns(table, [*columns, "ci_low", "ci_high"], "table")
    if table.empty:
        return _message_figure(path, "no accuracy results")
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["model"].unique()))
    fig, axes = _panels(len(tasks))
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for model, colour in colours.items():
            sub = rows[rows["model"] == model]
            temp = sub[sub["sampler"] == "temperature"].sort_values("temperature")
            if len(temp):
                t = temp["temperature"].to_numpy(dtype=float)
                ax.plot(t, temp["accuracy"], "o-", color=colour, label=f"{model}: temperature")
                ax.fill_between(t, temp["ci_low"], temp["ci_high"], color=colour, alpha=0.2)
            for _, row in sub[sub["sampler"] == "greedy"].iterrows():
                yerr = [[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]]
                ax.errorbar(
                    0.0,
                    row.accuracy,
                    yerr=np.clip(yerr, 0, None),
                    fmt="s",
                    color=colour,
                    capsize=3,
                    label=f"{model}: greedy",
                )
            others = sub[~sub["sampler"].isin(["temperature", "greedy"])]
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
    _legend(fig, axes)
    _save(fig, path)


def plot_acceptance_by_block(acc_table: pd.DataFrame, path) -> None:
    """Metropolis–Hastings acceptance rate against block index, one line per (model, method)."""
    _check_columns(acc_table, ["task", "model", "method", "block", "acceptance_rate"], "acc_table")
    if acc_table.empty:
        return _message_figure(path, "no power-sampling runs")
    _lines(acc_table, "block", "acceptance_rate", "block", "MH acceptance rate", path)


def plot_pass_at_k(passk_table: pd.DataFrame, path) -> None:
    """Unbiased pass@k against k, one line per (model, method), one panel per task."""
    _check_columns(passk_table, ["task", "model", "method", "k", "pass_at_k"], "passk_table")
    if passk_table.empty:
        return _message_figure(path, "no pass@k results")
    log_x = passk_table["k"].max() >= 8
    _lines(passk_table, "k", "pass_at_k", "k", "pass@k", path, log_x=log_x)


def _lines(table, x, y, xlabel, ylabel, path, *, log_x=False, band=None) -> None:
    """One line per (model, method), one panel per task; ``band``: (low, high) columns of
    a shaded interval around each line."""
    table = table.assign(line=table["model"].astype(str) + " / " + table["method"].astype(str))
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["line"].unique()))
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for line, sub in rows.groupby("line", sort=True):
            sub = sub.sort_values(x)
            ax.plot(sub[x], sub[y], "o-", markersize=3, color=colours[line], label=line)
            if band is not None:
                ax.fill_between(sub[x], sub[band[0]], sub[band[1]], color=colours[line], alpha=0.15)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(_PLAIN)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks and k are counts
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    _legend(fig, axes, "model / method")
    _save(fig, path)


def plot_sampler_trace(trace_table: pd.DataFrame, path) -> None:
    """Every sampler's per-stage diagnostics: the mean of each traced field against the stage,
    one panel per (sampler, field), one line per (task, model, method).

    Reads :func:`powersampling.metrics.sampler_trace_table`, so a new sampler's trace fields
    appear here without any change to this function.
    """
    columns = ["task", "model", "method", "sampler", "stage", "field", "mean"]
    _check_columns(trace_table, columns, "trace_table")
    if trace_table.empty:
        return _message_figure(path, "no sampler traces")
    table = trace_table.assign(
        panel=trace_table["sampler"].astype(str) + ": " + trace_table["field"].astype(str),
        line=trace_table["task"].astype(str)
        + " / "
        + trace_table["model"].astype(str)
        + " / "
        + trace_table["method"].astype(str),
    )
    panels = list(dict.fromkeys(table.sort_values(["sampler", "field"])["panel"]))
    colours = _palette(sorted(table["line"].unique()))
    fig, axes = _panels(len(panels), sharey=False)
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
    _legend(fig, axes, "task / model / method")
    _save(fig, path)


# --------------------------------------------------------------------------------------
# Inside the model: truncated models, LogitLens, activation patching
# (tables of powersampling.interp.tables)


def _errorbar_points(ax, rows: pd.DataFrame, x: str, colour, **style) -> None:
    """Accuracy points at ``x`` with their CI as error bars."""
    y = rows["accuracy"].to_numpy(dtype=float)
    yerr = np.vstack([y - rows["ci_low"], rows["ci_high"] - y]).astype(float).clip(min=0)
    ax.errorbar(rows[x].to_numpy(dtype=float), y, yerr=yerr, color=colour, capsize=3, **style)


def _truncation_lines(ax, rows: pd.DataFrame, colours: dict, both_kinds: bool) -> None:
    """Truncated accuracy against layers kept, one line per (method, keep_last)."""
    truncated = rows[~rows["is_full"].astype(bool)]
    for (method, keep_last), sub in truncated.groupby(["method", "keep_last"], sort=True):
        label = method
        if both_kinds:
            label += ", L + last block" if keep_last else ", first L blocks"
        style = "-" if keep_last or not both_kinds else "--"
        sub = sub.sort_values("layers_kept")
        _errorbar_points(
            ax, sub, "layers_kept", colours[method], fmt="o", ls=style, markersize=4, label=label
        )


def _full_points(ax, rows: pd.DataFrame, colours: dict) -> None:
    """The full model's accuracy as hollow markers at its depth, labelled "full"."""
    full = rows[rows["is_full"].astype(bool) & rows["layers_kept"].notna()]
    for method, sub in full.groupby("method", sort=True):
        _errorbar_points(
            ax, sub, "layers_kept", colours[method], fmt="o", mfc="white", markersize=7
        )
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


def _panel_keys(table: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return sorted(table[columns].drop_duplicates().itertuples(index=False, name=None))


def plot_truncation_accuracy(table: pd.DataFrame, path) -> None:
    """Accuracy against the decoder blocks a truncated model keeps, one line per method with
    CI error bars, one panel per (task, full model); the full model is a hollow marker at its
    depth."""
    columns = ["task", "base_model", "method", "layers_kept", "keep_last", "is_full"]
    _check_columns(table, [*columns, "accuracy", "ci_low", "ci_high"], "table")
    if table.empty:
        return _message_figure(path, "no truncated models")
    colours = _palette(sorted(table["method"].unique()))
    both_kinds = table["keep_last"].dropna().nunique() > 1
    panels = _panel_keys(table, ["task", "base_model"])
    fig, axes = _panels(len(panels))
    for ax, (task, base) in zip(axes, panels, strict=True):
        rows = table[(table["task"] == task) & (table["base_model"] == base)]
        _truncation_lines(ax, rows, colours, both_kinds)
        _full_points(ax, rows, colours)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} / {base}")
        ax.set_xlabel("layers kept (L)")
        ax.set_ylabel("accuracy")
    _legend(fig, axes, "method")
    _save(fig, path)


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
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no LogitLens results")
    kinds = {"last_prompt": 0, "answer": 1}  # the last prompt token first
    tasks = sorted(table["task"].unique())
    positions = sorted(table["position"].unique(), key=lambda p: (kinds.get(p, 2), p))
    colours = _palette(sorted(table["model"].unique()))
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
            kl_ax.yaxis.set_major_formatter(_PLAIN)
            kl_ax.set_ylim(bottom=0)
            kl_ax.set_title(f"{task}: {position.replace('_', ' ')}")
            _lens_panel(top1_ax, rows, "top1_agree", colours)
            top1_ax.set_ylim(-0.02, 1.02)
            top1_ax.set_xlabel("layer (block output, 0-based)")
            for ax, (_, ylabel) in zip((kl_ax, top1_ax), metrics, strict=True):
                ax.set_ylabel(ylabel if col == 0 else "")
    _legend(fig, list(grid.ravel()), "model")
    _save(fig, path)


def plot_lens_vs_truncation(table: pd.DataFrame, path) -> None:
    """Truncated models' accuracy (left axis, CI error bars, one line per method) against
    layers kept L, beside the full model's LogitLens KL at the last prompt token after block
    L-1 (right axis, dashed), one panel per (task, full model)."""
    columns = ["task", "base_model", "method", "layers_kept", "keep_last", "accuracy"]
    _check_columns(table, [*columns, "ci_low", "ci_high", "kl_last_prompt"], "table")
    if table.empty:
        return _message_figure(path, "no truncated models with a LogitLens of their full model")
    colours = _palette(sorted(table["method"].unique()))
    both_kinds = table["keep_last"].dropna().nunique() > 1
    panels = _panel_keys(table, ["task", "base_model"])
    fig, axes = _panels(len(panels))
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
    _legend(fig, [*axes, *twins])
    _save(fig, path)


def plot_patching_heatmap(table: pd.DataFrame, path) -> None:
    """Mean normalized patching effect per layer (rows) and prompt position relative to the
    answer position (columns), diverging colours centred at 0, one panel per (task, model)."""
    _check_columns(table, ["task", "model", "layer", "offset", "effect"], "table")
    if table.empty:
        return _message_figure(path, "no activation patching results")
    panels = _panel_keys(table, ["task", "model"])
    effects = table["effect"].astype(float)
    limit = float(np.nanmax(np.abs(effects))) if effects.notna().any() else 1.0
    limit = limit if limit > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    fig, axes = _panels(len(panels), sharey=False)
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
    _save(fig, path)


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
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no activation patching results")
    colours = dict(zip([m for m, _, _ in lines], sns.color_palette("colorblind", 2), strict=True))
    panels = _panel_keys(table, ["task", "model"])
    fig, axes = _panels(len(panels))
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
    _legend(fig, axes, "patched position")
    _save(fig, path)


# --------------------------------------------------------------------------------------
# Dynamic power sampling


def plot_dps_pareto(table: pd.DataFrame, path) -> None:
    """Accuracy against tokens per question on the held-out questions: each controller's τ
    sweep as a line (the τ chosen on training questions ringed), each baseline and the
    oracle as a point with its CI; one panel per (task, model)."""
    columns = ["task", "model", "policy", "tau", "kind", "chosen", "accuracy", "accuracy_low",
               "accuracy_high", "tokens_per_question"]  # fmt: skip
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no DPS results")
    panels = _panel_keys(table, ["task", "model"])
    colours = _palette(list(dict.fromkeys(table["policy"])))
    fig, axes = _panels(len(panels), sharey=True)
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
                _errorbar_points(ax, group.rename(columns={"accuracy_low": "ci_low",
                                 "accuracy_high": "ci_high"}), "tokens_per_question", colour,
                                 fmt="D" if policy == "oracle" else "s", label=policy)  # fmt: skip
        ax.set_title(f"{task} / {model}")
        ax.set_xlabel("tokens decoded per question")
        ax.set_ylabel("accuracy (majority vote)")
    _legend(fig, axes, "stopping rule")
    _save(fig, path)


def _reliability_diagrams(table, by, x, y, labels, path, empty) -> None:
    """Observed rate ``y`` against mean prediction ``x`` per bin, one line per ``by``
    value, one panel per (task, model); marker area grows with the bin's ``n``; the dotted
    diagonal is perfect calibration. ``labels``: (x label, y label, legend title)."""
    _check_columns(table, ["task", "model", by, x, y, "n"], "table")
    if table.empty:
        return _message_figure(path, empty)
    panels = _panel_keys(table, ["task", "model"])
    colours = _palette(list(dict.fromkeys(table[by])))
    fig, axes = _panels(len(panels), sharey=True)
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
    _legend(fig, axes, labels[2])
    _save(fig, path)


def plot_dps_calibration(table: pd.DataFrame, path) -> None:
    """Reliability diagram of each controller's p̂_enough on the held-out decisions: the
    observed rate of "enough" against the mean p̂ per bin (marker area ~ decisions)."""
    labels = ("predicted p(enough)", "observed share enough", "controller")
    _reliability_diagrams(table, "controller", "mean_p_enough", "enough_rate", labels, path,
                          "no controller results")  # fmt: skip


def plot_dps_importance(table: pd.DataFrame, path) -> None:
    """GBDT's permutation importances on the held-out decisions (drop in ROC-AUC when a
    feature is shuffled), the twelve largest per (task, model)."""
    columns = ["task", "model", "feature", "importance_mean", "importance_std"]
    _check_columns(table, columns, "table")
    table = table.dropna(subset=["importance_mean"])
    if table.empty:
        return _message_figure(path, "no permutation importances (no GBDT, or one label only)")
    panels = _panel_keys(table, ["task", "model"])
    fig, axes = _panels(len(panels), sharey=False)
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
    _save(fig, path)


# --------------------------------------------------------------------------------------
# Temperature reliability


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
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no reliability results")
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["model"].unique()))
    styles = {"accuracy_strict": "-", "accuracy_lenient": "--", "compliance": ":"}
    labels = {"accuracy_strict": "strict", "accuracy_lenient": "lenient",
              "compliance": "compliance"}  # fmt: skip
    fig, axes = _panels(len(tasks), sharey=True)
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
    _legend(fig, axes, "model: measure")
    _save(fig, path)


def plot_reliability_confidence(table: pd.DataFrame, path) -> None:
    """Confidence profiles: mean and minimum token log p at T = 1 per setting, one panel per
    task, one colour per model (the sampled distribution's log q is in the table)."""
    columns = ["task", "model", "method", "temperature", "logp_t1_mean", "logp_t1_min"]
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no reliability results")
    tasks = sorted(table["task"].unique())
    colours = _palette(sorted(table["model"].unique()))
    fig, axes = _panels(len(tasks), sharey=False)
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
    _legend(fig, axes, "model: confidence")
    _save(fig, path)


def plot_reliability_calibration(table: pd.DataFrame, path) -> None:
    """Reliability diagrams: strict accuracy against confidence (exp mean token log p at
    T = 1) in equal-mass bins, one line per setting, one panel per (task, model)."""
    labels = ("confidence: exp(mean token log p), T = 1", "accuracy (strict)", "setting")
    _reliability_diagrams(table, "method", "mean_confidence", "accuracy", labels, path,
                          "no reliability results")  # fmt: skip


def plot_failures(table: pd.DataFrame, path) -> None:
    """The failure taxonomy as stacked rates per setting (share of all generations), one
    panel per (task, model); what is left to 1 is right."""
    columns = ["task", "model", "method", "category", "rate"]
    _check_columns(table, columns, "table")
    if table.empty:
        return _message_figure(path, "no reliability results")
    panels = _panel_keys(table, ["task", "model"])
    categories = list(dict.fromkeys(table["category"]))
    colours = dict(zip(categories, sns.color_palette("colorblind", len(categories)), strict=True))
    fig, axes = _panels(len(panels), sharey=True)
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
    _legend(fig, axes, "failure (first rule that matches)")
    _save(fig, path)


# --------------------------------------------------------------------------------------
# The registry of report figures


@dataclass(frozen=True)
class FigureSpec:
    """How the workflow makes one report figure, ``results/plots/{name}.svg``."""

    name: str
    draw: Callable[[pd.DataFrame, Path], None]  # one of the plot_* functions above
    table: str  # the metric table it is drawn from: results/tables/{table}.parquet
    category: str  # the report category it is shown under
    # The config study that makes its table ("truncation", "logit_lens", "patching", "dps"): the
    # figure is drawn only when the config has that study. None: always drawn.
    study: str | None = None

    @property
    def caption(self) -> str:
        """Its caption file, relative to the workflow's root (a Jinja2 template)."""
        return f"reports/figures/{self.name}.rst"


ACCURACY = "1. Accuracy"
LIKELIHOOD_AND_COMPUTE = "2. Likelihood and compute"
SAMPLER_DIAGNOSTICS = "3. Sampler diagnostics"
INSIDE = "6. Inside the model"  # 4 is the configuration, 5 the toy-world studies
DPS = "7. Dynamic power sampling"
RELIABILITY = "8. Reliability"

FIGURES: dict[str, FigureSpec] = {
    spec.name: spec
    for spec in [
        FigureSpec("accuracy_by_method", plot_accuracy_by_method, "accuracy", ACCURACY),
        FigureSpec("accuracy_vs_temperature", plot_accuracy_vs_temperature, "accuracy", ACCURACY),
        FigureSpec(
            "accuracy_by_difficulty",
            plot_accuracy_by_difficulty,
            "accuracy_by_difficulty",
            ACCURACY,
        ),
        FigureSpec(
            "accuracy_vs_compute", plot_accuracy_vs_compute, "accuracy", LIKELIHOOD_AND_COMPUTE
        ),
        FigureSpec("logp_vs_compute", plot_logp_vs_compute, "accuracy", LIKELIHOOD_AND_COMPUTE),
        FigureSpec("logp_by_method", plot_logp_by_method, "accuracy", LIKELIHOOD_AND_COMPUTE),
        FigureSpec("tokens_by_method", plot_tokens_by_method, "accuracy", LIKELIHOOD_AND_COMPUTE),
        FigureSpec(
            "acceptance_by_block",
            plot_acceptance_by_block,
            "acceptance_by_block",
            SAMPLER_DIAGNOSTICS,
        ),
        FigureSpec("pass_at_k", plot_pass_at_k, "pass_at_k", ACCURACY),
        FigureSpec("sampler_trace", plot_sampler_trace, "sampler_trace", SAMPLER_DIAGNOSTICS),
        FigureSpec(
            "truncation_accuracy", plot_truncation_accuracy, "truncation", INSIDE, "truncation"
        ),
        FigureSpec("logit_lens", plot_logit_lens, "logit_lens", INSIDE, "logit_lens"),
        FigureSpec(
            "lens_vs_truncation",
            plot_lens_vs_truncation,
            "lens_vs_truncation",
            INSIDE,
            "truncation",  # it also needs the LogitLens of the full models
        ),
        FigureSpec(
            "patching_heatmap", plot_patching_heatmap, "patching_heatmap", INSIDE, "patching"
        ),
        FigureSpec(
            "patching_by_layer", plot_patching_by_layer, "patching_by_layer", INSIDE, "patching"
        ),
        FigureSpec("dps_pareto", plot_dps_pareto, "dps_sweep", DPS, "dps"),
        FigureSpec("dps_calibration", plot_dps_calibration, "dps_calibration", DPS, "dps"),
        FigureSpec("dps_importance", plot_dps_importance, "dps_importance", DPS, "dps"),
        FigureSpec("reliability", plot_reliability, "reliability", RELIABILITY, "reliability"),
        FigureSpec(
            "reliability_confidence",
            plot_reliability_confidence,
            "reliability",
            RELIABILITY,
            "reliability",
        ),
        FigureSpec(
            "reliability_calibration",
            plot_reliability_calibration,
            "reliability_bins",
            RELIABILITY,
            "reliability",
        ),
        FigureSpec("failures", plot_failures, "failures", RELIABILITY, "reliability"),
    ]
}
