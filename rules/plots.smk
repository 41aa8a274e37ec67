"""Figures for the report, each drawn from a metric table by a function in powersampling.plots."""

PLOTS = [
    "results/plots/accuracy_by_method.svg",
    "results/plots/accuracy_vs_temperature.svg",
    "results/plots/logp_by_method.svg",
    "results/plots/tokens_by_method.svg",
    "results/plots/acceptance_by_block.svg",
    "results/plots/pass_at_k.svg",
]


rule plot_accuracy_by_method:
    input:
        "results/tables/accuracy.parquet",
    output:
        report(
            "results/plots/accuracy_by_method.svg",
            caption="../reports/accuracy_by_method.rst",
            category="1. Accuracy",
        ),
    log:
        "logs/plots/accuracy_by_method.log",
    conda:
        "../environment.yml"
    params:
        plot="accuracy_by_method",
    script:
        "../workflow/scripts/plot.py"


rule plot_accuracy_vs_temperature:
    input:
        "results/tables/accuracy.parquet",
    output:
        report(
            "results/plots/accuracy_vs_temperature.svg",
            caption="../reports/accuracy_vs_temperature.rst",
            category="1. Accuracy",
        ),
    log:
        "logs/plots/accuracy_vs_temperature.log",
    conda:
        "../environment.yml"
    params:
        plot="accuracy_vs_temperature",
    script:
        "../workflow/scripts/plot.py"


rule plot_logp_by_method:
    input:
        "results/tables/accuracy.parquet",
    output:
        report(
            "results/plots/logp_by_method.svg",
            caption="../reports/logp_by_method.rst",
            category="2. Likelihood and compute",
        ),
    log:
        "logs/plots/logp_by_method.log",
    conda:
        "../environment.yml"
    params:
        plot="logp_by_method",
    script:
        "../workflow/scripts/plot.py"


rule plot_tokens_by_method:
    input:
        "results/tables/accuracy.parquet",
    output:
        report(
            "results/plots/tokens_by_method.svg",
            caption="../reports/tokens_by_method.rst",
            category="2. Likelihood and compute",
        ),
    log:
        "logs/plots/tokens_by_method.log",
    conda:
        "../environment.yml"
    params:
        plot="tokens_by_method",
    script:
        "../workflow/scripts/plot.py"


rule plot_acceptance_by_block:
    input:
        "results/tables/acceptance_by_block.parquet",
    output:
        report(
            "results/plots/acceptance_by_block.svg",
            caption="../reports/acceptance_by_block.rst",
            category="3. Power sampling",
        ),
    log:
        "logs/plots/acceptance_by_block.log",
    conda:
        "../environment.yml"
    params:
        plot="acceptance_by_block",
    script:
        "../workflow/scripts/plot.py"


rule plot_pass_at_k:
    input:
        "results/tables/pass_at_k.parquet",
    output:
        report(
            "results/plots/pass_at_k.svg",
            caption="../reports/pass_at_k.rst",
            category="1. Accuracy",
        ),
    log:
        "logs/plots/pass_at_k.log",
    conda:
        "../environment.yml"
    params:
        plot="pass_at_k",
    script:
        "../workflow/scripts/plot.py"
