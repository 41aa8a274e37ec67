"""Temperature reliability: accuracy two ways, compliance, consistency, confidence,
calibration and failures per setting, over the graded shards of studies.reliability."""


rule collect_reliability:
    input:
        shard_paths("graded", get_study("reliability").graded_runs(config, RUNS)),
    output:
        reliability="results/tables/reliability.parquet",
        reliability_bins="results/tables/reliability_bins.parquet",
        failures="results/tables/failures.parquet",
        html=report(
            "results/tables/reliability.html",
            caption="../reports/reliability_table.rst",
            category="8. Reliability",
            labels={"table": "reliability by task, model and setting"},
        ),
    log:
        "logs/collect_reliability.log",
    conda:
        "../environment.yml"
    params:
        prompts={
            name: task.get("prompt", "worked")
            for name, task in config["tasks"].items()
        },
        study=config["studies"].get("reliability"),
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_reliability.py"
