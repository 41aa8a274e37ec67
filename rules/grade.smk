"""Grading: each generation shard against its task's reference answers."""


rule grade:
    input:
        generations="results/generations/" + SHARD_FILE,
        data="data/{task}.parquet",
    output:
        "results/graded/" + SHARD_FILE,
    log:
        "logs/grade/" + SHARD_FILE.replace(".parquet", ".log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        task_seed=lambda wildcards: task_seed(config, wildcards.task),
    script:
        "../workflow/scripts/grade.py"
