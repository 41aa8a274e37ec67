"""The DPS tables across tasks and models, with the dps methods that ran for real."""

from powersampling.logs import job_log
from powersampling.stages.dps import collect_dps

with job_log(snakemake.log[0]) as log:
    collect_dps(
        evaluations=snakemake.params.evaluations,
        online_paths=list(snakemake.input.online),
        methods=snakemake.params.methods,
        study=snakemake.params.study,
        report=snakemake.params.report,
        seed=snakemake.params.seed,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
