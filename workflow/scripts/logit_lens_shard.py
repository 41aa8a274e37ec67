"""LogitLens on one shard: greedy answers, then every block read out through the head."""

import os

# Models are read from local folders (staged by download_model), never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.interp import logit_lens_shard

with job_log(snakemake.log[0]) as log:
    logit_lens_shard(
        shard_job(snakemake),
        max_new_tokens=snakemake.params.settings["max_new_tokens"],
        batch_size=snakemake.params.settings["batch_size"],
        out_path=snakemake.output[0],
        log=log.info,
    )
