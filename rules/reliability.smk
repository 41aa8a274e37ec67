"""Temperature reliability: accuracy two ways, compliance, consistency, confidence,
calibration and failures per setting, over the graded shards of studies.reliability."""


def reliability_shards():
    """The graded shards of the reliability study's tasks, models and settings."""
    study = config["studies"].get("reliability")
    if study is None:
        return []
    return shard_paths(
        "graded",
        [
            run
            for run in RUNS
            if run.task in study["tasks"]
            and run.model in study["models"]
            and run.method in study["methods"]
        ],
    )


rule collect_reliability:
    input:
        reliability_shards(),
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
