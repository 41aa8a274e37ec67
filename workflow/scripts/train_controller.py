"""Train one DPS controller on the training questions of a pool."""

from powersampling.logs import job_log
from powersampling.stages.dps import train_controller

with job_log(snakemake.log[0]) as log:
    train_controller(
        pool_path=snakemake.input.pool,
        embeddings_path=snakemake.input.get("embeddings"),
        controller=snakemake.wildcards.controller,
        study=snakemake.params.study,
        seed=snakemake.params.seed,
        out_path=snakemake.output[0],
        log=log.info,
    )
