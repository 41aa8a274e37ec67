"""Inside the model: LogitLens per layer, activation patching, truncated models' accuracy.

LogitLens and patching run one job per (task, model, shard), each loading its model once
(config sections studies.logit_lens and studies.patching). Truncated models need no rule
of their own: they are models of the experiments (config key truncate); their accuracy
against the layers kept is a table over the accuracy table.
"""


rule logit_lens_shard:
    input:
        unpack(model_inputs),
        data="data/{task}.parquet",
    output:
        "results/logit_lens/{task}/{model}/shard{shard}.parquet",
    log:
        "logs/logit_lens_shard/{task}/{model}/shard{shard}.log",
    benchmark:
        "benchmarks/logit_lens_shard/{task}/{model}/shard{shard}.tsv"
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
        rows=lambda wildcards: shard_rows(config, wildcards.task, int(wildcards.shard)),
        settings=config["studies"].get("logit_lens"),
        device=config["device"],
    script:
        "../workflow/scripts/logit_lens_shard.py"


rule patching_shard:
    input:
        unpack(model_inputs),
        data="data/{task}.parquet",
    output:
        frame="results/patching/{task}/{model}/shard{shard}.parquet",
        counts="results/patching/{task}/{model}/shard{shard}.counts.json",
    log:
        "logs/patching_shard/{task}/{model}/shard{shard}.log",
    benchmark:
        "benchmarks/patching_shard/{task}/{model}/shard{shard}.tsv"
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
        rows=lambda wildcards: shard_rows(config, wildcards.task, int(wildcards.shard)),
        settings=config["studies"].get("patching"),
        device=config["device"],
    script:
        "../workflow/scripts/patching_shard.py"


rule collect_logit_lens:
    input:
        analysis_shards("logit_lens"),
    output:
        "results/tables/logit_lens.parquet",
    log:
        "logs/collect_logit_lens.log",
    conda:
        "../environment.yml"
    params:
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_logit_lens.py"


rule collect_patching:
    input:
        frames=analysis_shards("patching"),
        counts=[
            p.replace(".parquet", ".counts.json") for p in analysis_shards("patching")
        ],
    output:
        heatmap="results/tables/patching_heatmap.parquet",
        by_layer="results/tables/patching_by_layer.parquet",
        pairs=report(
            "results/tables/patching_pairs.csv",
            caption="../reports/patching_pairs.rst",
            category="6. Inside the model",
            labels={"table": "pairs used and dropped"},
        ),
    log:
        "logs/collect_patching.log",
    conda:
        "../environment.yml"
    params:
        tasks=lambda wildcards: {
            task: (config["tasks"][task], task_seed(config, task))
            for task in config["studies"]["patching"]["tasks"]
        },
        report=config["report"],
        seed=config["seed"],
    script:
        "../workflow/scripts/collect_patching.py"


rule collect_truncation:
    input:
        accuracy="results/tables/accuracy.parquet",
        lens=(
            ["results/tables/logit_lens.parquet"]
            if "logit_lens" in config["studies"]
            else []
        ),
    output:
        truncation="results/tables/truncation.parquet",
        lens_vs_truncation="results/tables/lens_vs_truncation.parquet",
    log:
        "logs/collect_truncation.log",
    conda:
        "../environment.yml"
    params:
        models=config["models"],
    script:
        "../workflow/scripts/collect_truncation.py"
