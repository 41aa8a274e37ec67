"""Config validation and the helpers every rule file uses."""

import re
import sys

from powersampling.config import (
    GENERATED_KINDS,
    decoding_method,
    method_job_settings,
    shard_rows,
    n_shards,
    planned_runs,
    run_seeds,
    task_seed,
    task_size,
    validate_config,
    with_command_line_values,
)
from powersampling.errors import UserError
from powersampling.plan import (
    calibration_seed,
    calibration_targets,
    slice_rows,
    time_plan,
)
from powersampling.memory.resources import generation_mem_mb
from powersampling.samplers import sampler_class
from powersampling.seeding import derive_seed
from powersampling.sources import (
    REHEARSAL_SOURCE,
    TOY_SOURCE,
    model_source,
    toy_settings,
    weights_of,
)
from powersampling.studies import Run, active_studies, get_study, study_rule_files

# A bad config stops here, before any job runs, with one line per problem.
try:
    config = validate_config(
        with_command_line_values(config, workflow.config_settings.config),
        workflow.source_path("../config/schema.yaml"),
    )
except UserError as err:
    sys.exit(f"Error: {err}")

RUNS = planned_runs(config)
# Host memory (MB, first attempt) of each (model, method)'s generation jobs, from the memory
# plan each job obeys; a job that would need more than the config allows stops the run here.
try:
    GENERATION_MEM_MB = {
        (model, method): generation_mem_mb(
            config, model, decoding_method(config, method)
        )
        for model, method in dict.fromkeys((run.model, run.method) for run in RUNS)
    }
except UserError as err:
    sys.exit(f"Error: {err}")
# The studies this config runs (their rules are in rules/<study>.smk).
STUDIES_IN_CONFIG = [study.name for study in active_studies(config, RUNS)]
# The seeds of one (task, model, method) share its generation jobs: one model load each.
SEEDS = run_seeds(config)
SHARD_FILE = "{task}/{model}/{method}/shard{shard}.parquet"
# The calibrations (rules/calibration.smk): each (model, method) of the runs, on one task.
CALIBRATIONS = {(t.task, t.model, t.method): t for t in calibration_targets(config)}
CALIBRATION_DIR = "results/calibration"


def make_time_plan():
    """The time plan (python -m powersampling.plan), with the calibrations made so far."""
    from pathlib import Path

    try:
        measured = CALIBRATION_DIR if Path(CALIBRATION_DIR).is_dir() else None
        return time_plan(config, calibration_dir=measured)
    except UserError as err:  # a calibration file it cannot read: plan without them
        print(
            f"Warning: {err}; the time plan ignores the calibrations", file=sys.stderr
        )
        return time_plan(config)


# Each generation and calibration job's runtime comes from it; a generation job predicted
# over resources.max_runtime_min stops the run here, before any job starts.
try:
    TIME_PLAN = make_time_plan()
except UserError as err:
    sys.exit(f"Error: {err}")
if TIME_PLAN.over_cap():
    sys.exit("Error: the time plan refuses:\n  " + "\n  ".join(TIME_PLAN.over_cap()))


wildcard_constraints:
    task="[A-Za-z0-9_.+-]+",
    model="[A-Za-z0-9_.+-]+",
    method="[A-Za-z0-9_.+-]+",
    seed=r"\d+",
    shard=r"\d{3}",


def names_alternation(names):
    """A regex matching exactly these names (never matching anything when empty)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def tasks_of_kind(synthetic):
    return [
        name
        for name, task in config["tasks"].items()
        if (task["kind"] in GENERATED_KINDS) == synthetic
    ]


def models_with_source(kind):
    """Model entries with their own weights (a truncated model reads its base model's)
    whose source is of ``kind``: toy, rehearsal, local or hub (staged into model_cache by
    rule download_model)."""
    return [
        name
        for name in config["models"]
        if weights_of(config, name) == name and model_source(config, name).kind == kind
    ]


def shard_paths(stage, runs=None):
    """Per-shard files of ``stage`` (generations or graded) holding the given runs (each
    file holds every seed of its task, model and method)."""
    triples = dict.fromkeys(
        (run.task, run.model, run.method) for run in (RUNS if runs is None else runs)
    )
    paths = []
    for task, model, method in triples:
        for shard in range(n_shards(config, task)):
            paths.append(
                f"results/{stage}/"
                + SHARD_FILE.format(
                    task=task, model=model, method=method, shard=f"{shard:03d}"
                )
            )
    return paths


def model_inputs(wildcards):
    """The model folder a job reads when the workflow makes it: built (toy, rehearsal) or
    staged from the hub (download_model); a local folder named in the config is no input.
    """
    source = model_source(config, wildcards.model)
    return {} if source.kind == "local" else {"model": source.folder}


def sampler_job_files(wildcards):
    """The files a generation job's sampler reads besides data and model (a controller)."""
    method = config["methods"][wildcards.method]
    return sampler_class(method["sampler"]).job_files(
        method, config, wildcards.task, wildcards.model
    )


def sampler_job_settings(wildcards):
    """What a generation job's sampler needs from the config beyond its method."""
    return method_job_settings(config, wildcards.method)


def generation_mem_mb_by_attempt(wildcards, attempt):
    """A generation job's host memory: its plan's need, grown with each retry."""
    return GENERATION_MEM_MB[wildcards.model, wildcards.method] * attempt


def generation_runtime(wildcards, attempt):
    """A generation job's runtime (minutes): its predicted time (the time plan) x
    resources.runtime_safety_factor, at least generation_runtime_min, x attempt, at most
    max_runtime_min."""
    shard = (wildcards.task, wildcards.model, wildcards.method, int(wildcards.shard))
    return TIME_PLAN.runtime_min(TIME_PLAN.job(*shard), attempt)


def calibration_mem_mb(wildcards, attempt):
    """A calibration job's host memory: a generation job's of its method, grown on retries."""
    method = config["methods"][wildcards.method]
    return generation_mem_mb(config, wildcards.model, method) * attempt


def calibration_runtime(wildcards, attempt):
    """A calibration job's runtime, from the time plan as a generation job's."""
    job = TIME_PLAN.calibrations[wildcards.model, wildcards.method]
    return TIME_PLAN.runtime_min(job, attempt)


def calibration_target(wildcards):
    key = (wildcards.task, wildcards.model, wildcards.method)
    if key not in CALIBRATIONS:
        raise ValueError(f"{'/'.join(key)} is not a calibration of this config")
    return CALIBRATIONS[key]


def calibration_paths():
    return [target.path for target in CALIBRATIONS.values()]


def calibration_inputs(wildcards):
    """What a calibration job reads: as a generation job of its method on its task."""
    calibration_target(wildcards)
    return {
        **model_inputs(wildcards),
        **sampler_job_files(wildcards),
        "data": f"data/{wildcards.task}.parquet",
    }


def calibration_params(wildcards):
    """The slice a calibration runs, and the problems of the shard it is taken from."""
    target = calibration_target(wildcards)
    start, stop = shard_rows(config, target.task, 0)
    return {"rows": slice_rows(config, target), "shard_problems": stop - start}


def scaled_by_attempt(first_attempt):
    """A resource that grows with each retry, so a job killed for memory or time can pass."""
    return lambda wildcards, attempt: first_attempt * attempt


def synthetic_task_data():
    return [f"data/{task}.parquet" for task in tasks_of_kind(synthetic=True)]


def figure_paths():
    """The report figures, one per entry of powersampling.plots.FIGURES (rule plot), less
    those of studies this config does not run."""
    from powersampling.plots import FIGURES

    return [
        f"results/plots/{name}.svg"
        for name, spec in FIGURES.items()
        if spec.study is None or spec.study in STUDIES_IN_CONFIG
    ]


def rendered_caption(caption_file):
    """A figure's caption file (relative to the workflow's root), rendered with the config.

    A report caption's path cannot hold wildcards, so a rule that makes figures by wildcard
    gives report() the generic reports/figure.rst, which shows this text, passed as the
    param `caption`. Rendered as Snakemake renders captions: a Jinja2 template that sees
    `snakemake.config`.
    """
    from pathlib import Path
    from types import SimpleNamespace

    from jinja2 import Environment

    template = Path(workflow.basedir, caption_file).read_text()
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(snakemake=SimpleNamespace(config=config))


def alpaca_eval_exports():
    """AlpacaEval outputs in its judge's format; judged too when the config has a judge."""
    suffix = "_judged" if "alpaca_eval_judge" in config else ".json"
    return [
        f"results/alpaca_eval/{run.task}/{run.model}/{run.method}/seed{run.seed}{suffix}"
        for run in RUNS
        if config["tasks"][run.task]["kind"] == "alpaca"
    ]


def all_outputs():
    return [
        *alpaca_eval_exports(),
        "results/tables/accuracy.parquet",
        "results/tables/pass_at_k.parquet",
        *figure_paths(),
        *(
            path
            for study in active_studies(config, RUNS)
            for path in study.outputs(config)
        ),
        "results/calibration/calibration.parquet",
        "results/tables/cost.parquet",
        "results/config.yaml",
    ]


def analysis_shards(study):
    """Per-shard files of a study that runs one job per task, model and shard."""
    section = config["studies"].get(study)
    if section is None:
        return []
    return [
        f"results/{study}/{task}/{model}/shard{shard:03d}.parquet"
        for task in section["tasks"]
        for model in section["models"]
        for shard in range(n_shards(config, task))
    ]
