"""The patching tables: effect by layer and position, by layer, and the pairs' counts."""

from powersampling.logs import job_log
from powersampling.stages.interp import collect_patching

with job_log(snakemake.log[0]) as log:
    collect_patching(
        paths=list(snakemake.input.frames),
        counts_paths=list(snakemake.input.counts),
        tasks=snakemake.params.tasks,
        n_boot=snakemake.params.report["bootstrap_samples"],
        level=snakemake.params.report["ci_level"],
        seed=snakemake.params.seed,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
