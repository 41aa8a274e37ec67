"""Aggregate every graded shard into the metric tables."""

from powersampling.logs import job_log
from powersampling.stages.metrics import collect_metrics

with job_log(snakemake.log[0]) as log:
    collect_metrics(
        graded_paths=list(snakemake.input),
        methods=snakemake.params.methods,
        n_boot=snakemake.params.report["bootstrap_samples"],
        level=snakemake.params.report["ci_level"],
        seed=snakemake.params.seed,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
