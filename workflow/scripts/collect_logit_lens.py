"""The LogitLens table: KL, top-1 agreement and entropy per layer with CIs."""

from powersampling.logs import job_log
from powersampling.stages.interp import collect_logit_lens

with job_log(snakemake.log[0]) as log:
    collect_logit_lens(
        paths=list(snakemake.input),
        n_boot=snakemake.params.report["bootstrap_samples"],
        level=snakemake.params.report["ci_level"],
        seed=snakemake.params.seed,
        out_path=snakemake.output[0],
        log=log.info,
    )
