"""Run one exact toy-world study: a table and its figure."""

from powersampling.logs import job_log
from powersampling.stages.studies import toy_study

with job_log(snakemake.log[0]):
    toy_study(
        snakemake.wildcards.study,
        snakemake.params.settings,
        seed=snakemake.params.seed,
        table_path=snakemake.output.table,
        plot_path=snakemake.output.figure,
    )
