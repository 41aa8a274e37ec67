"""Exact toy-world studies of power sampling (config section studies.exact_toy)."""


rule toy_study:
    output:
        table="results/studies/{study}.parquet",
        figure=report(
            "results/plots/study_{study}.svg",
            caption="../reports/toy_study.rst",
            category="5. Toy-world studies",
        ),
    log:
        "logs/toy_study/{study}.log",
    wildcard_constraints:
        study="power_vs_temperature|convergence|greedy_vs_power",
    conda:
        "../environment.yml"
    params:
        settings=config["studies"].get("exact_toy"),
        seed=lambda wildcards: derive_seed(config["seed"], "study", wildcards.study),
    script:
        "../workflow/scripts/toy_study.py"
