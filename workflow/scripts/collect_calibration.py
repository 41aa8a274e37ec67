"""Every calibration of the config in one table."""

from powersampling.logs import job_log
from powersampling.stages.calibration import collect_calibration

with job_log(snakemake.log[0]) as log:
    collect_calibration(list(snakemake.input), snakemake.output.table, log=log.info)
