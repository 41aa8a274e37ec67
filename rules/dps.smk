"""Dynamic power sampling: the trajectory pool, question embeddings, controllers, replay.

The pool is the seeds 0..k_max-1 of the study's power method (planned with the runs). Per
task and model: the pool table with its training / held-out split, each controller trained
on the training questions, and every stopping rule replayed on the held-out ones. A method
{sampler: dps} reads its controller file (rule generate), so retraining a controller reruns
exactly the shards of the dps methods that use it.
"""


def dps_pairs():
    """(task, model) of the DPS study: one pool, set of controllers and replay each."""
    study = config["studies"].get("dps")
    if study is None:
        return []
    return [(task, model) for task in study["tasks"] for model in study["models"]]


def dps_pool_shards(task, model):
    """The graded shards of the study's pool on one task and model."""
    study = config["studies"]["dps"]
    return shard_paths(
        "graded", [Run(task, model, study["pool"], s) for s in range(study["k_max"])]
    )


def dps_embeddings_input(task, model, controller=None):
    """The question embeddings, for whatever reads them: mlp_hq (or, with no controller
    named, the evaluation of a study that trains mlp_hq)."""
    study = config["studies"]["dps"]
    needed = controller == "mlp_hq" if controller else "mlp_hq" in study["controllers"]
    if not needed:
        return {}
    return {"embeddings": f"results/dps/{task}/{model}/question_embeddings.parquet"}


def dps_controller_files(task, model):
    return {
        name: f"results/dps/{task}/{model}/controllers/{name}.pkl"
        for name in config["studies"]["dps"]["controllers"]
    }


def dps_evaluation_files(task, model):
    folder = f"results/dps/{task}/{model}/evaluation"
    return {
        name: f"{folder}/{name}.parquet"
        for name in ("replay", "summary", "quality", "calibration", "importance")
    }


def dps_runs():
    """The runs of dps methods (they answer the held-out questions for real)."""
    return [run for run in RUNS if config["methods"][run.method]["sampler"] == "dps"]


def dps_online_taus(task, model):
    """Per controller, the tau of the dps methods that run on this task and model: the
    replay adds them to its sweep, to compare the real runs with it."""
    taus = {}
    for run in dps_runs():
        if (run.task, run.model) == (task, model):
            method = config["methods"][run.method]
            taus.setdefault(method["controller"], []).append(method["tau"])
    return taus


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
        lambda wildcards: dps_pool_shards(wildcards.task, wildcards.model),
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
            lambda wildcards: dps_embeddings_input(
                wildcards.task, wildcards.model, wildcards.controller
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
        unpack(lambda wildcards: dps_embeddings_input(wildcards.task, wildcards.model)),
        pool="results/dps/{task}/{model}/pool.parquet",
        # In the order of studies.dps.controllers.
        controllers=lambda wildcards: list(
            dps_controller_files(wildcards.task, wildcards.model).values()
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
        online_taus=lambda wildcards: dps_online_taus(wildcards.task, wildcards.model),
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/evaluate_dps.py"


rule collect_dps:
    input:
        evaluations=[
            path
            for task, model in dps_pairs()
            for path in dps_evaluation_files(task, model).values()
        ],
        online=shard_paths("graded", dps_runs()),
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
            f"{task}/{model}": dps_evaluation_files(task, model)
            for task, model in dps_pairs()
        },
        methods=config["methods"],
        study=config["studies"].get("dps"),
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_dps.py"
