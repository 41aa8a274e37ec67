"""Writing the toy studies' figures: one file per figure, atomic and reproducible."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from powersampling.errors import UserError
from powersampling.io import write_atomic


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` atomically in the format of ``path``'s suffix (svg, png or pdf); SVG
    text stays text and its ids are salted by a constant, so a table gives the same bytes."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise UserError(f"cannot tell a figure format from {str(path)!r}: use .svg, .png or .pdf")
    FigureCanvasAgg(fig)

    def writer(tmp):
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "powersampling"}):
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata={"Date": None})

    write_atomic(path, writer)
