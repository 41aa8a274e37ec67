"""Models the workflow builds itself: the toy world's tiny Qwen2 model."""


rule train_toy_model:
    input:
        # Evaluation problems are held out of the training data.
        holdout=synthetic_task_data(),
    output:
        directory("results/models/{model}"),
    log:
        "logs/train_toy_model/{model}.log",
    wildcard_constraints:
        model=names_alternation(toy_models()),
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
