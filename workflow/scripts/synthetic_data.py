"""Write data/{task}.parquet: one row per problem."""

from powersampling.logs import job_log
from powersampling.stages.data import synthetic_data

with job_log(snakemake.log[0]):
    synthetic_data(
        snakemake.wildcards.task,
        snakemake.params.task,
        seed=snakemake.params.seed,
        out_path=snakemake.output[0],
    )
