"""Grade one generation shard against the task's reference answers."""

from powersampling.logs import job_log
from powersampling.stages.grade import grade

with job_log(snakemake.log[0]) as log:
    grade(
        generations_path=snakemake.input.generations,
        data_path=snakemake.input.data,
        task_name=snakemake.wildcards.task,
        task=snakemake.params.task,
        task_seed=snakemake.params.task_seed,
        out_path=snakemake.output[0],
        log=log.info,
    )
