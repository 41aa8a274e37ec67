"""Exact toy-world studies of power sampling (config section studies.exact_toy).

One job per entry of powersampling.toy.studies.STUDIES, which names each study's
functions and its figure's caption file (reports/figures/study_{study}.rst).
"""

from powersampling.toy.studies import STUDIES


rule toy_study:
    output:
        table="results/studies/{study}.parquet",
        figure=report(
            "results/plots/study_{study}.svg",
            caption="../reports/figure.rst",
            category="5. Toy-world studies",
        ),
    log:
        "logs/toy_study/{study}.log",
    wildcard_constraints:
        study=names_alternation(STUDIES),
    conda:
        "../environment.yml"
    params:
        settings=config["studies"].get("exact_toy"),
        seed=lambda wildcards: derive_seed(config["seed"], "study", wildcards.study),
        caption=lambda wildcards: rendered_caption(STUDIES[wildcards.study].caption),
    script:
        "../workflow/scripts/toy_study.py"
