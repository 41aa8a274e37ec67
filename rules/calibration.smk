"""Calibration: each (model, method) of the generation runs timed on a short slice of a real
shard, on the generation jobs' device, through the same generation code and memory plan;
the time plan (python -m powersampling.plan --calibration results/calibration) reads it.
"""


rule calibrate:
    input:
        unpack(calibration_inputs),
    output:
        "results/calibration/{task}/{model}/{method}.parquet",
    log:
        "logs/calibrate/{task}/{model}/{method}.log",
    conda:
        "../environment.yml"
    threads: config["resources"]["generation_threads"]
    resources:
        gpu=config["resources"]["gpu"],
        mem_mb=calibration_mem_mb,
        runtime=calibration_runtime,
    params:
        model=lambda wildcards: config["models"][wildcards.model],
        method=lambda wildcards: config["methods"][wildcards.method],
        task=lambda wildcards: config["tasks"][wildcards.task],
        task_seed=lambda wildcards: task_seed(config, wildcards.task),
        rows=lambda wildcards: calibration_params(wildcards)["rows"],
        shard_problems=lambda wildcards: calibration_params(wildcards)["shard_problems"],
        seed=calibration_seed(config),
        min_timed_s=config["calibration"]["min_timed_s"],
        generation=config["generation"],
        device=config["device"],
        sampler_files=lambda wildcards: list(sampler_job_files(wildcards)),
        sampler_settings=sampler_job_settings,
    script:
        "../workflow/scripts/calibrate.py"


rule collect_calibration:
    input:
        calibration_paths(),
    output:
        table="results/calibration/calibration.parquet",
        csv="results/calibration/calibration.csv",
    log:
        "logs/collect_calibration.log",
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/collect_calibration.py"
