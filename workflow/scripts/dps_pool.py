"""The trajectory pool of one task and model, split into training and held-out questions."""

from powersampling.logs import job_log
from powersampling.stages.dps import dps_pool

with job_log(snakemake.log[0]) as log:
    dps_pool(
        graded_paths=list(snakemake.input),
        task_name=snakemake.wildcards.task,
        model_name=snakemake.wildcards.model,
        pool_method=snakemake.params.study["pool"],
        k_max=snakemake.params.study["k_max"],
        train_share=snakemake.params.study["train_share"],
        seed=snakemake.params.seed,
        out_path=snakemake.output[0],
        log=log.info,
    )
