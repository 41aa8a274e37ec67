"""Calibrate one (model, method): its speeds on a short slice of a real shard."""

import os

# As a generation job: models are read from local folders, never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# On CUDA, let the allocator grow segments instead of stranding fragments: a plan can use
# all but a few percent of the card. Set before torch loads; a user's own setting wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.calibration import calibrate

with job_log(snakemake.log[0]) as log:
    calibrate(
        shard_job(snakemake, shard=0),
        method_name=snakemake.wildcards.method,
        method=snakemake.params.method,
        seed=snakemake.params.seed,
        shard_problems=snakemake.params.shard_problems,
        generation=snakemake.params.generation,
        out_path=snakemake.output[0],
        min_timed_s=snakemake.params.min_timed_s,
        sampler_files={name: snakemake.input[name] for name in snakemake.params.sampler_files},
        sampler_settings=snakemake.params.sampler_settings,
        log=log.info,
    )
