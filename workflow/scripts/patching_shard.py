"""Activation patching on one shard of a pairs task: every layer, every prompt position."""

import os

# Models are read from local folders (staged by download_model), never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.interp import patching_shard

with job_log(snakemake.log[0]) as log:
    patching_shard(
        shard_job(snakemake),
        max_batch=snakemake.params.settings["max_batch"],
        out_path=snakemake.output.frame,
        counts_path=snakemake.output.counts,
        log=log.info,
    )
