"""Stage a hub model (configs, safetensors weights, tokenizer) at one pinned commit."""

from powersampling.logs import job_log
from powersampling.stages.models import download_model

with job_log(snakemake.log[0]) as log:
    download_model(
        snakemake.params.source,
        revision=snakemake.params.revision,
        out_dir=snakemake.output[0],
        log=log.info,
    )
