"""Replay every stopping rule on the held-out questions of one pool."""

from powersampling.logs import job_log
from powersampling.stages.dps import evaluate_dps

with job_log(snakemake.log[0]) as log:
    evaluate_dps(
        pool_path=snakemake.input.pool,
        embeddings_path=snakemake.input.get("embeddings"),
        controller_paths=dict(
            zip(snakemake.params.study["controllers"], snakemake.input.controllers, strict=True)
        ),
        study=snakemake.params.study,
        online_taus=snakemake.params.online_taus,
        report=snakemake.params.report,
        seed=snakemake.params.seed,
        outputs=dict(snakemake.output.items()),
        log=log.info,
    )
