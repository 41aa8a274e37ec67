"""Metric tables over every graded shard: accuracy with CIs, pass@k, sampler diagnostics;
the time plan against what the generation jobs spent."""


rule collect_metrics:
    input:
        shard_paths("graded"),
    output:
        accuracy="results/tables/accuracy.parquet",
        accuracy_csv="results/tables/accuracy.csv",
        accuracy_by_difficulty="results/tables/accuracy_by_difficulty.parquet",
        pass_at_k="results/tables/pass_at_k.parquet",
        acceptance="results/tables/acceptance_by_block.parquet",
        sampler_trace="results/tables/sampler_trace.parquet",
        accuracy_html=report(
            "results/tables/accuracy.html",
            caption="../reports/accuracy_table.rst",
            category="1. Accuracy",
            labels={"table": "accuracy by task, model and method"},
        ),
    log:
        "logs/collect_metrics.log",
    conda:
        "../environment.yml"
    params:
        methods=config["methods"],
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_metrics.py"


rule collect_cost:
    input:
        generations=shard_paths("generations"),
        calibrations=calibration_paths(),
    output:
        cost="results/tables/cost.parquet",
        cost_csv="results/tables/cost.csv",
        cost_html=report(
            "results/tables/cost.html",
            caption="../reports/cost_table.rst",
            category="9. Cost",
            labels={"table": "time plan against the generation jobs"},
        ),
    log:
        "logs/collect_cost.log",
    conda:
        "../environment.yml"
    params:
        config=config,
    script:
        "../workflow/scripts/collect_cost.py"


rule export_alpaca_eval:
    input:
        generations=lambda wildcards: shard_paths(
            "generations",
            [
                Run(
                    wildcards.task,
                    wildcards.model,
                    wildcards.method,
                    int(wildcards.seed),
                )
            ],
        ),
        data="data/{task}.parquet",
    output:
        "results/alpaca_eval/{task}/{model}/{method}/seed{seed}.json",
    log:
        "logs/export_alpaca_eval/{task}/{model}/{method}/seed{seed}.log",
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/export_alpaca_eval.py"


rule judge_alpaca_eval:
    input:
        "results/alpaca_eval/{task}/{model}/{method}/seed{seed}.json",
    output:
        directory("results/alpaca_eval/{task}/{model}/{method}/seed{seed}_judged"),
    log:
        "logs/judge_alpaca_eval/{task}/{model}/{method}/seed{seed}.log",
    conda:
        "../environment.yml"
    params:
        judge=config.get("alpaca_eval_judge"),
    script:
        "../workflow/scripts/judge_alpaca_eval.py"
