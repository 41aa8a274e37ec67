"""The ShardJob of a rule that runs a model over a shard of a task (generate,
logit_lens_shard, patching_shard, question_embeddings), read from the rule's ``snakemake``
object in one place.

No rule runs this file: those rules' scripts import it (Snakemake puts a script's folder on
its ``sys.path``).
"""

from powersampling.stages.shards import ShardJob


def shard_job(snakemake, shard: int | None = None) -> ShardJob:
    """The job of the rule's input ``data`` (and ``model`` when the workflow makes the
    model's folder), its params ``model``, ``task``, ``task_seed``, ``rows`` and ``device``,
    and its wildcards ``model`` and ``task``. ``shard``: the shard's number, for errors."""
    return ShardJob(
        data_path=snakemake.input.data,
        model_name=snakemake.wildcards.model,
        model=snakemake.params.model,
        model_dir=snakemake.input.get("model"),
        task_name=snakemake.wildcards.task,
        task=snakemake.params.task,
        task_seed=snakemake.params.task_seed,
        rows=snakemake.params.rows,
        device=snakemake.params.device,
        threads=snakemake.threads,
        shard=shard,
    )
