"""Write data/{task}.parquet from the task's public source or a local file."""

from powersampling.logs import job_log
from powersampling.stages.data import download_dataset

with job_log(snakemake.log[0]) as log:
    download_dataset(
        snakemake.wildcards.task,
        snakemake.params.task,
        seed=snakemake.params.seed,
        out_path=snakemake.output.data,
        log=log.info,
    )
