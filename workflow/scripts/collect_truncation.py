"""Truncated models' accuracy against the layers kept, beside the full model's LogitLens."""

from powersampling.logs import job_log
from powersampling.stages.interp import collect_truncation

with job_log(snakemake.log[0]) as log:
    collect_truncation(
        accuracy_path=snakemake.input.accuracy,
        lens_path=snakemake.input.lens[0] if snakemake.input.lens else None,
        models=snakemake.params.models,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
