"""Generate completions for one shard: one model load, batched decoding."""

import os

# Models are read from local folders (staged by download_model): a compute node never
# reaches for the hub, which may be slow, rate-limited or unreachable from there.
os.environ["HF_HUB_OFFLINE"] = "1"
# On CUDA, let the allocator grow segments instead of stranding fragments: a plan can use
# all but a few percent of the card. Set before torch loads; a user's own setting wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from shard_job import shard_job

from powersampling.logs import job_log
from powersampling.stages.generate import generate

with job_log(snakemake.log[0]) as log:
    generate(
        shard_job(snakemake, shard=int(snakemake.wildcards.shard)),
        method_name=snakemake.wildcards.method,
        method=snakemake.params.method,
        seeds=snakemake.params.seeds,
        generation=snakemake.params.generation,
        out_path=snakemake.output[0],
        # What the method's sampler reads besides prompts (see rules/common.smk).
        sampler_files={name: snakemake.input[name] for name in snakemake.params.sampler_files},
        sampler_settings=snakemake.params.sampler_settings,
        log=log.info,
    )
