"""The plumbing every report figure shares: checking its table, a figure of panels, one
legend for all panels, colours, and writing the file deterministically.

Figures are bare :class:`matplotlib.figure.Figure` objects on the headless Agg canvas, never
pyplot, so they work on display-less cluster nodes, touch no global figure state or style and
leave nothing open.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from powersampling.errors import UserError
from powersampling.io import write_atomic

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
PANEL_WIDTH, PANEL_HEIGHT = 4.8, 3.6
# 400 rather than 4×10², on log axes
PLAIN_NUMBERS = FuncFormatter(lambda value, _: f"{value:g}")


def _format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"cannot tell a figure format from {str(path)!r}: use .svg, .png or .pdf.")
    return FORMATS[suffix]


def check_columns(table: pd.DataFrame, required: list[str], what: str) -> None:
    """Refuse a ``table`` that is no DataFrame, or a non-empty one that lacks a column."""
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{what} must be a pandas DataFrame, got {type(table).__name__}.")
    missing = [c for c in required if c not in table.columns]
    if missing and not table.empty:
        raise UserError(f"{what} lacks the column(s) {missing}.")


# SVG text stays text (searchable, small) and ids are salted by a constant, so the same
# table gives byte-identical figures.
_SAVE_RC = {"svg.fonttype": "none", "svg.hashsalt": "powersampling"}


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` atomically in the format of ``path``'s suffix."""
    fmt = _format(path)
    FigureCanvasAgg(fig)  # attach a canvas so savefig works without pyplot
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None

    def writer(tmp):
        with matplotlib.rc_context(_SAVE_RC):
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=metadata)

    write_atomic(path, writer)
    fig.clear()


def message_figure(path, message: str) -> None:
    """A figure that only says ``message``: what an empty table draws."""
    fig = Figure(figsize=(PANEL_WIDTH, 1.6))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    save_figure(fig, path)


def panel_figure(n: int, sharey: bool = True) -> tuple[Figure, list]:
    """A figure with ``n`` panels in rows of at most three."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(PANEL_WIDTH * ncols, PANEL_HEIGHT * nrows), layout="constrained")
    with sns.axes_style("whitegrid"):  # applies to axes created here, leaves rcParams alone
        axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def figure_legend(fig: Figure, axes: list, title: str | None = None) -> None:
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


def palette(names) -> dict:
    """A colour-blind-safe colour for each distinct name, in order of first appearance."""
    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))


def panel_keys(table: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """The distinct values of ``columns``, sorted: one panel each."""
    return sorted(table[columns].drop_duplicates().itertuples(index=False, name=None))
