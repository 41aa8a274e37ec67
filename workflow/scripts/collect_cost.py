"""The time plan against what the generation jobs spent."""

from powersampling.logs import job_log
from powersampling.stages.metrics import collect_cost

with job_log(snakemake.log[0]) as log:
    collect_cost(
        generation_paths=list(snakemake.input.generations),
        config=snakemake.params.config,
        calibration_paths=list(snakemake.input.calibrations),
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
