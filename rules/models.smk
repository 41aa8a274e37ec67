"""Models: the ones the workflow builds (toy, rehearsal) and hub models staged locally."""


rule train_toy_model:
    input:
        # Evaluation problems are held out of the training data.
        holdout=synthetic_task_data(),
    output:
        directory("results/models/{model}"),
    log:
        "logs/train_toy_model/{model}.log",
    wildcard_constraints:
        model=names_alternation(models_with_source(TOY_SOURCE)),
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        settings=lambda wildcards: toy_settings(config, wildcards.model),
        seed=lambda wildcards: derive_seed(config["seed"], "toy-model", wildcards.model),
    script:
        "../workflow/scripts/train_toy_model.py"


rule build_rehearsal_model:
    output:
        directory("results/models/{model}"),
    log:
        "logs/build_rehearsal_model/{model}.log",
    wildcard_constraints:
        model=names_alternation(models_with_source(REHEARSAL_SOURCE)),
    conda:
        "../environment.yml"
    threads: 1
    resources:
        # Full-width weights are built in float32 before they are saved in their dtype.
        mem_mb=16000,
        runtime=30,
    params:
        settings=lambda wildcards: config["models"][wildcards.model],
        seed=lambda wildcards: derive_seed(
            config["seed"], "rehearsal-model", wildcards.model
        ),
    script:
        "../workflow/scripts/build_rehearsal_model.py"


# Runs where Snakemake runs (on a cluster: the login node, which reaches the hub), once
# per model; generation jobs then read the staged folder with the hub switched off.
rule download_model:
    output:
        directory(f"{config['model_cache']}/{{model}}"),
    log:
        "logs/download_model/{model}.log",
    wildcard_constraints:
        model=names_alternation(models_with_source("hub")),
    retries: 2
    conda:
        "../environment.yml"
    params:
        source=lambda wildcards: config["models"][wildcards.model]["source"],
        revision=lambda wildcards: config["models"][wildcards.model]["revision"],
    script:
        "../workflow/scripts/download_model.py"
