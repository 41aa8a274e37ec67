"""Generation: one job per shard, one model load per job, batched decoding.

A shard's job runs every seed of its task, model and method (one after the other, each
with its own random stream, so a seed's rows do not depend on which others share the job).
"""


rule generate:
    input:
        unpack(model_inputs),
        unpack(sampler_job_files),
        data="data/{task}.parquet",
    output:
        "results/generations/{task}/{model}/{method}/shard{shard}.parquet",
    log:
        "logs/generate/{task}/{model}/{method}/shard{shard}.log",
    benchmark:
        "benchmarks/generate/{task}/{model}/{method}/shard{shard}.tsv"
    conda:
        "../environment.yml"
    threads: config["resources"]["generation_threads"]
    resources:
        gpu=config["resources"]["gpu"],
        mem_mb=generation_mem_mb_by_attempt,
        runtime=generation_runtime,
    params:
        model=lambda wildcards: config["models"][wildcards.model],
        method=lambda wildcards: config["methods"][wildcards.method],
        seeds=lambda wildcards: SEEDS[wildcards.task, wildcards.model, wildcards.method],
        rows=lambda wildcards: shard_rows(config, wildcards.task, int(wildcards.shard)),
        task=lambda wildcards: config["tasks"][wildcards.task],
        task_seed=lambda wildcards: task_seed(config, wildcards.task),
        generation=config["generation"],
        device=config["device"],
        sampler_files=lambda wildcards: list(sampler_job_files(wildcards)),
        sampler_settings=sampler_job_settings,
    script:
        "../workflow/scripts/generate.py"
