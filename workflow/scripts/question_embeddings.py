"""Every question's embedding: a middle block's residual stream, averaged over the prompt."""

import os

# Models are read from local folders (staged by download_model), never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

from powersampling.logs import job_log
from powersampling.stages.dps import question_embeddings

with job_log(snakemake.log[0]) as log:
    question_embeddings(
        data_path=snakemake.input.data,
        model_name=snakemake.wildcards.model,
        model=snakemake.params.model,
        model_dir=snakemake.input.get("model"),
        task_name=snakemake.wildcards.task,
        task=snakemake.params.task,
        task_seed=snakemake.params.task_seed,
        rows=snakemake.params.rows,
        layer=snakemake.params.study["embedding_layer"],
        batch_size=snakemake.params.study["embedding_batch_size"],
        device=snakemake.params.device,
        threads=snakemake.threads,
        out_path=snakemake.output[0],
        log=log.info,
    )
