"""The registry of report figures: :data:`FIGURES` is the one list of the workflow's report
figures. Each name maps to its drawing function, the metric table it is drawn from, its
report category and its caption file. The workflow's single ``plot`` rule makes
``results/plots/{name}.svg`` for every entry.

Adding a figure is one entry in :data:`FIGURES` plus its caption file
``reports/figures/{name}.rst`` (a Jinja2 template that sees ``snakemake.config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from powersampling.plots.dps import plot_dps_calibration, plot_dps_importance, plot_dps_pareto
from powersampling.plots.generation import (
    plot_acceptance_by_block,
    plot_accuracy_by_difficulty,
    plot_accuracy_by_method,
    plot_accuracy_vs_compute,
    plot_accuracy_vs_temperature,
    plot_logp_by_method,
    plot_logp_vs_compute,
    plot_pass_at_k,
    plot_sampler_trace,
    plot_tokens_by_method,
)
from powersampling.plots.inside import (
    plot_lens_vs_truncation,
    plot_logit_lens,
    plot_patching_by_layer,
    plot_patching_heatmap,
    plot_truncation_accuracy,
)
from powersampling.plots.reliability import (
    plot_failures,
    plot_reliability,
    plot_reliability_calibration,
    plot_reliability_confidence,
)


@dataclass(frozen=True)
class FigureSpec:
    """How the workflow makes one report figure, ``results/plots/{name}.svg``."""

    name: str
    draw: Callable[[pd.DataFrame, Path], None]  # one of the plot_* functions of this package
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
