"""Dynamic power sampling: the trajectory pool, question embeddings, controllers, replay.

The pool is the seeds 0..k_max-1 of the study's power method (planned with the runs). Per
task and model: the pool table with its training / held-out split, each controller trained
on the training questions, and every stopping rule replayed on the held-out ones. A method
{sampler: dps} reads its controller file (rule generate), so retraining a controller reruns
exactly the shards of the dps methods that use it.
"""

DPS = get_study("dps")


rule question_embeddings:
    input:
        unpack(model_inputs),
        data="data/{task}.parquet",
    output:
        "results/dps/{task}/{model}/question_embeddings.parquet",
    log:
        "logs/question_embeddings/{task}/{model}.log",
    benchmark:
        "benchmarks/question_embeddings/{task}/{model}.tsv"
    conda:
        "../environment.yml"
    threads: config["resources"]["generation_threads"]
    resources:
        gpu=config["resources"]["gpu"],
        mem_mb=scaled_by_attempt(config["resources"]["generation_mem_mb"]),
        runtime=scaled_by_attempt(config["resources"]["generation_runtime_min"]),
    params:
        model=lambda wildcards: config["models"][wildcards.model],
        task=lambda wildcards: config["tasks"][wildcards.task],
        task_seed=lambda wildcards: task_seed(config, wildcards.task),
        rows=lambda wildcards: (0, task_size(config, wildcards.task)),
        study=config["studies"].get("dps"),
        device=config["device"],
    script:
        "../workflow/scripts/question_embeddings.py"


rule dps_pool:
    input:
        lambda wildcards: shard_paths(
            "graded", DPS.pool_runs(config, wildcards.task, wildcards.model)
        ),
    output:
        "results/dps/{task}/{model}/pool.parquet",
    log:
        "logs/dps_pool/{task}/{model}.log",
    conda:
        "../environment.yml"
    params:
        study=config["studies"].get("dps"),
        seed=config["seed"],
    script:
        "../workflow/scripts/dps_pool.py"


rule train_controller:
    input:
        unpack(
            lambda wildcards: DPS.embeddings_input(
                config, wildcards.task, wildcards.model, wildcards.controller
            )
        ),
        pool="results/dps/{task}/{model}/pool.parquet",
    output:
        "results/dps/{task}/{model}/controllers/{controller}.pkl",
    log:
        "logs/train_controller/{task}/{model}/{controller}.log",
    wildcard_constraints:
        controller="gbdt|mlp_h|mlp_hq",
    conda:
        "../environment.yml"
    params:
        study=config["studies"].get("dps"),
        seed=lambda wildcards: derive_seed(
            config["seed"], "controller", wildcards.task, wildcards.model
        ),
    script:
        "../workflow/scripts/train_controller.py"


rule evaluate_dps:
    input:
        unpack(
            lambda wildcards: DPS.embeddings_input(
                config, wildcards.task, wildcards.model
            )
        ),
        pool="results/dps/{task}/{model}/pool.parquet",
        # In the order of studies.dps.controllers.
        controllers=lambda wildcards: list(
            DPS.controller_files(config, wildcards.task, wildcards.model).values()
        ),
    output:
        replay="results/dps/{task}/{model}/evaluation/replay.parquet",
        summary="results/dps/{task}/{model}/evaluation/summary.parquet",
        quality="results/dps/{task}/{model}/evaluation/quality.parquet",
        calibration="results/dps/{task}/{model}/evaluation/calibration.parquet",
        importance="results/dps/{task}/{model}/evaluation/importance.parquet",
    log:
        "logs/evaluate_dps/{task}/{model}.log",
    conda:
        "../environment.yml"
    params:
        study=config["studies"].get("dps"),
        online_taus=lambda wildcards: DPS.online_taus(
            config, RUNS, wildcards.task, wildcards.model
        ),
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/evaluate_dps.py"


rule collect_dps:
    input:
        evaluations=[
            path
            for task, model in DPS.pairs(config)
            for path in DPS.evaluation_files(task, model).values()
        ],
        online=shard_paths("graded", DPS.online_runs(config, RUNS)),
    output:
        dps="results/tables/dps.parquet",
        sweep="results/tables/dps_sweep.parquet",
        controllers="results/tables/dps_controllers.parquet",
        calibration="results/tables/dps_calibration.parquet",
        importance="results/tables/dps_importance.parquet",
        html=report(
            "results/tables/dps.html",
            caption="../reports/dps_table.rst",
            category="7. Dynamic power sampling",
            labels={"table": "stopping rules on held-out questions"},
        ),
    log:
        "logs/collect_dps.log",
    conda:
        "../environment.yml"
    params:
        evaluations={
            f"{task}/{model}": DPS.evaluation_files(task, model)
            for task, model in DPS.pairs(config)
        },
        methods=config["methods"],
        study=config["studies"].get("dps"),
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_dps.py"
