"""The reliability tables over the study's graded shards."""

from powersampling.logs import job_log
from powersampling.stages.reliability import collect_reliability

with job_log(snakemake.log[0]) as log:
    collect_reliability(
        paths=list(snakemake.input),
        prompts=snakemake.params.prompts,
        study=snakemake.params.study,
        report=snakemake.params.report,
        seed=snakemake.params.seed,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
