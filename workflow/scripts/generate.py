"""Generate completions for one shard: one model load, batched decoding."""

import os

# Models are read from local folders (staged by download_model): a compute node never
# reaches for the hub, which may be slow, rate-limited or unreachable from there.
os.environ["HF_HUB_OFFLINE"] = "1"

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.generate import generate

# A dps method's controller and question embeddings (see rules/common.smk).
dps = snakemake.params.dps
if dps is not None:
    dps = {
        **dps,
        "controller": snakemake.input.controller,
        "embeddings": snakemake.input.get("embeddings"),
    }

with job_log(snakemake.log[0]) as log:
    generate(
        shard_job(snakemake, shard=int(snakemake.wildcards.shard)),
        method_name=snakemake.wildcards.method,
        method=snakemake.params.method,
        seeds=snakemake.params.seeds,
        generation=snakemake.params.generation,
        out_path=snakemake.output[0],
        dps=dps,
        log=log.info,
    )
