"""Figures for the report: one job per entry of powersampling.plots.FIGURES.

Each figure is drawn from a metric table by its function in powersampling.plots, which
also names its table, report category and caption file (reports/figures/{plot}.rst).
"""

from powersampling.plots import FIGURES


rule plot:
    input:
        lambda wildcards: f"results/tables/{FIGURES[wildcards.plot].table}.parquet",
    output:
        report(
            "results/plots/{plot}.svg",
            caption="../reports/figure.rst",
            category=lambda wildcards: FIGURES[wildcards.plot].category,
        ),
    log:
        "logs/plot/{plot}.log",
    wildcard_constraints:
        plot=names_alternation(FIGURES),
    conda:
        "../environment.yml"
    params:
        caption=lambda wildcards: rendered_caption(FIGURES[wildcards.plot].caption),
    script:
        "../workflow/scripts/plot.py"
