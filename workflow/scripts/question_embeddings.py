"""Every question's embedding: a middle block's residual stream, averaged over the prompt."""

import os

# Models are read from local folders (staged by download_model), never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.dps import question_embeddings

with job_log(snakemake.log[0]) as log:
    question_embeddings(
        shard_job(snakemake),
        layer=snakemake.params.study["embedding_layer"],
        batch_size=snakemake.params.study["embedding_batch_size"],
        out_path=snakemake.output[0],
        log=log.info,
    )
