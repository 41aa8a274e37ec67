"""Write one run's AlpacaEval outputs in alpaca_eval's JSON format, for its judge."""

from powersampling.logs import job_log
from powersampling.stages.metrics import export_alpaca_eval

with job_log(snakemake.log[0]) as log:
    export_alpaca_eval(
        generation_paths=list(snakemake.input.generations),
        data_path=snakemake.input.data,
        generator=f"{snakemake.wildcards.model}/{snakemake.wildcards.method}",
        seed=int(snakemake.wildcards.seed),
        out_path=snakemake.output[0],
        log=log.info,
    )
