"""Draw one report figure from a metric table."""

from powersampling.logs import job_log
from powersampling.stages.plots import plot

with job_log(snakemake.log[0]):
    plot(snakemake.wildcards.plot, snakemake.input[0], snakemake.output[0])
