"""Grading: each generation shard against its task's reference answers."""


rule grade:
    input:
        generations="results/generations/{task}/{model}/{method}/shard{shard}.parquet",
        data="data/{task}.parquet",
    output:
        "results/graded/{task}/{model}/{method}/shard{shard}.parquet",
    log:
        "logs/grade/{task}/{model}/{method}/shard{shard}.log",
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        task_seed=lambda wildcards: task_seed(config, wildcards.task),
    script:
        "../workflow/scripts/grade.py"
