"""Datasets: synthetic problems are generated; benchmarks are downloaded or read locally."""


rule synthetic_data:
    output:
        "data/{task}.parquet",
    log:
        "logs/synthetic_data/{task}.log",
    wildcard_constraints:
        task=names_alternation(tasks_of_kind(synthetic=True)),
    conda:
        "../environment.yml"
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        seed=lambda wildcards: task_seed(config, wildcards.task),
    script:
        "../workflow/scripts/synthetic_data.py"


rule download_dataset:
    output:
        data="data/{task}.parquet",
        checksum="data/{task}.meta.json",
    log:
        "logs/download_dataset/{task}.log",
    wildcard_constraints:
        task=names_alternation(tasks_of_kind(synthetic=False)),
    conda:
        "../environment.yml"
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        seed=lambda wildcards: task_seed(config, wildcards.task),
    script:
        "../workflow/scripts/download_dataset.py"
