"""Report figures drawn from the metric tables (see :mod:`powersampling.metrics`).

Every ``plot_*`` function takes a table and an output path, writes the figure atomically in
the format named by the path's suffix (``.svg``, ``.png`` or ``.pdf``) and returns nothing.
An empty table gives a figure that says so instead of an error, so the report still
renders when, say, a config has no power-sampling methods.

:data:`FIGURES` (:mod:`~powersampling.plots.registry`) is the one list of the workflow's
report figures. The figures live by subject:

- :mod:`~powersampling.plots.generation`: accuracy, log p, tokens, compute, difficulty,
  temperature, MH acceptance, pass@k and sampler traces;
- :mod:`~powersampling.plots.inside`: truncated models, LogitLens, activation patching;
- :mod:`~powersampling.plots.dps`: dynamic power sampling;
- :mod:`~powersampling.plots.reliability`: temperature reliability;

drawn with :mod:`~powersampling.plots.drawing` (checking tables, panels, legends, colours,
deterministic files) and :mod:`~powersampling.plots.charts` (chart shapes several figures
share).
"""

from powersampling.plots.dps import plot_dps_calibration, plot_dps_importance, plot_dps_pareto
from powersampling.plots.drawing import FORMATS, PANEL_HEIGHT, PANEL_WIDTH
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
from powersampling.plots.registry import (
    ACCURACY,
    DPS,
    FIGURES,
    INSIDE,
    LIKELIHOOD_AND_COMPUTE,
    RELIABILITY,
    SAMPLER_DIAGNOSTICS,
    FigureSpec,
)
from powersampling.plots.reliability import (
    plot_failures,
    plot_reliability,
    plot_reliability_calibration,
    plot_reliability_confidence,
)

__all__ = [
    "ACCURACY",
    "DPS",
    "FIGURES",
    "FORMATS",
    "INSIDE",
    "LIKELIHOOD_AND_COMPUTE",
    "PANEL_HEIGHT",
    "PANEL_WIDTH",
    "RELIABILITY",
    "SAMPLER_DIAGNOSTICS",
    "FigureSpec",
    "plot_acceptance_by_block",
    "plot_accuracy_by_difficulty",
    "plot_accuracy_by_method",
    "plot_accuracy_vs_compute",
    "plot_accuracy_vs_temperature",
    "plot_dps_calibration",
    "plot_dps_importance",
    "plot_dps_pareto",
    "plot_failures",
    "plot_lens_vs_truncation",
    "plot_logit_lens",
    "plot_logp_by_method",
    "plot_logp_vs_compute",
    "plot_pass_at_k",
    "plot_patching_by_layer",
    "plot_patching_heatmap",
    "plot_reliability",
    "plot_reliability_calibration",
    "plot_reliability_confidence",
    "plot_sampler_trace",
    "plot_tokens_by_method",
    "plot_truncation_accuracy",
]
