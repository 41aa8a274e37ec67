"""Build a rehearsal model: a published architecture, random weights, its real tokenizer."""

from powersampling.logs import job_log
from powersampling.stages.models import build_rehearsal_model

with job_log(snakemake.log[0]) as log:
    build_rehearsal_model(
        snakemake.params.settings,
        seed=snakemake.params.seed,
        out_dir=snakemake.output[0],
        log=log.info,
    )
