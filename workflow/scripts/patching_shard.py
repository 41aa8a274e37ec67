"""Activation patching on one shard of a pairs task: every layer, every prompt position."""

import os

# Models are read from local folders (staged by download_model), never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from powersampling.logs import job_log
from powersampling.stages.interp import patching_shard

with job_log(snakemake.log[0]) as log:
    patching_shard(
        data_path=snakemake.input.data,
        model_name=snakemake.wildcards.model,
        model=snakemake.params.model,
        model_dir=snakemake.input.get("model"),
        task_name=snakemake.wildcards.task,
        task=snakemake.params.task,
        task_seed=snakemake.params.task_seed,
        rows=snakemake.params.rows,
        max_batch=snakemake.params.settings["max_batch"],
        device=snakemake.params.device,
        threads=snakemake.threads,
        out_path=snakemake.output.frame,
        counts_path=snakemake.output.counts,
        log=log.info,
    )
