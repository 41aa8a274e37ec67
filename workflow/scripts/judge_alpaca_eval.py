"""Judge one run's AlpacaEval outputs with alpaca_eval (a paid API; configured explicitly)."""

from powersampling.logs import job_log
from powersampling.stages.metrics import judge_alpaca_eval

with job_log(snakemake.log[0]) as log:
    judge_alpaca_eval(
        snakemake.input[0], snakemake.output[0], judge=snakemake.params.judge, log=log.info
    )
