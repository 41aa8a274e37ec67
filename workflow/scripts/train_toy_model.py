"""Train the toy world's model and save it as a Hugging Face model directory."""

from powersampling.logs import job_log
from powersampling.stages.models import train_toy_model

with job_log(snakemake.log[0]) as log:
    train_toy_model(
        snakemake.params.settings,
        holdout_paths=snakemake.input.holdout,
        seed=snakemake.params.seed,
        out_dir=snakemake.output[0],
        threads=snakemake.threads,
        log=log.info,
    )
