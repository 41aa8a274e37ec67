"""Config validation and the helpers every rule file uses."""

import re
import sys

from powersampling.config import (
    GENERATED_KINDS,
    REHEARSAL_SOURCE,
    TOY_SOURCE,
    BUILT_SOURCES,
    Run,
    decoding_method,
    shard_rows,
    n_shards,
    planned_runs,
    run_seeds,
    task_seed,
    task_size,
    toy_settings,
    validate_config,
    with_command_line_values,
)
from powersampling.errors import UserError
from powersampling.seeding import derive_seed
from powersampling.sources import is_local_path

# A bad config stops here, before any job runs, with one line per problem.
try:
    config = validate_config(
        with_command_line_values(config, workflow.config_settings.config),
        workflow.source_path("../config/schema.yaml"),
    )
except UserError as err:
    sys.exit(f"Error: {err}")

RUNS = planned_runs(config)
# The seeds of one (task, model, method) share its generation jobs: one model load each.
SEEDS = run_seeds(config)
SHARD_FILE = "{task}/{model}/{method}/shard{shard}.parquet"


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


def full_models():
    """Model entries with their own weights (a truncated model reads its base model's)."""
    return {n: m for n, m in config["models"].items() if "truncation" not in m}


def models_with_source(source):
    return [n for n, m in full_models().items() if m["source"] == source]


def hub_models():
    """Models read from the hub: staged into model_cache by rule download_model."""
    return [
        name
        for name, model in full_models().items()
        if model["source"] not in BUILT_SOURCES and not is_local_path(model["source"])
    ]


def weights_of(model):
    """The model entry whose weights ``model`` loads: its own, or its base model's."""
    return config["models"][model].get("truncation", {}).get("of", model)


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
    """The model folder a generation job reads: built by the workflow (toy, rehearsal),
    staged from the hub (download_model), or a local folder named in the config."""
    model = weights_of(wildcards.model)
    source = config["models"][model]["source"]
    if source in BUILT_SOURCES:
        return {"model": f"results/models/{model}"}
    if model in hub_models():
        return {"model": f"{config['model_cache']}/{model}"}
    return {}


def scaled_by_attempt(first_attempt):
    """A resource that grows with each retry, so a job killed for memory or time can pass."""
    return lambda wildcards, attempt: first_attempt * attempt


def synthetic_task_data():
    return [f"data/{task}.parquet" for task in tasks_of_kind(synthetic=True)]


def figure_paths():
    """The report figures, one per entry of powersampling.plots.FIGURES (rule plot), less
    those of studies this config does not run."""
    from powersampling.plots import FIGURES

    studies = studies_in_config()
    return [
        f"results/plots/{name}.svg"
        for name, spec in FIGURES.items()
        if spec.study is None or spec.study in studies
    ]


def study_outputs():
    """The toy-world studies' figures, one per entry of powersampling.toy.studies.STUDIES."""
    if "exact_toy" not in config["studies"]:
        return []
    from powersampling.toy.studies import STUDIES

    return [f"results/plots/study_{study}.svg" for study in STUDIES]


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
        *study_outputs(),
        *(
            ["results/tables/patching_pairs.csv"]
            if "patching" in config["studies"]
            else []
        ),
        *(["results/tables/dps.html"] if "dps" in config["studies"] else []),
        *(
            ["results/tables/reliability.html"]
            if "reliability" in config["studies"]
            else []
        ),
        "results/config.yaml",
    ]


def analysis_shards(study):
    """Per-shard files of a study over tasks and models (logit_lens, patching)."""
    section = config["studies"].get(study)
    if section is None:
        return []
    return [
        f"results/{study}/{task}/{model}/shard{shard:03d}.parquet"
        for task in section["tasks"]
        for model in section["models"]
        for shard in range(n_shards(config, task))
    ]


def studies_in_config():
    """The studies whose tables this config makes (the figures of the others are left out)."""
    studies = {
        name
        for name in ("logit_lens", "patching", "dps", "reliability")
        if name in config["studies"]
    }
    if any("truncation" in config["models"][run.model] for run in RUNS):
        studies.add("truncation")
    return studies


# Dynamic power sampling (rules/dps.smk)


def dps_pairs():
    """(task, model) of the DPS study: one pool, set of controllers and replay each."""
    study = config["studies"].get("dps")
    if study is None:
        return []
    return [(task, model) for task in study["tasks"] for model in study["models"]]


def dps_pool_shards(task, model):
    """The graded shards of the study's pool on one task and model."""
    study = config["studies"]["dps"]
    return shard_paths(
        "graded", [Run(task, model, study["pool"], s) for s in range(study["k_max"])]
    )


def dps_embeddings_input(task, model, controller=None):
    """The question embeddings, for whatever reads them: mlp_hq (or, with no controller
    named, the evaluation of a study that trains mlp_hq)."""
    study = config["studies"]["dps"]
    needed = controller == "mlp_hq" if controller else "mlp_hq" in study["controllers"]
    if not needed:
        return {}
    return {"embeddings": f"results/dps/{task}/{model}/question_embeddings.parquet"}


def dps_controller_files(task, model):
    return {
        name: f"results/dps/{task}/{model}/controllers/{name}.pkl"
        for name in config["studies"]["dps"]["controllers"]
    }


def dps_evaluation_files(task, model):
    folder = f"results/dps/{task}/{model}/evaluation"
    return {
        name: f"{folder}/{name}.parquet"
        for name in ("replay", "summary", "quality", "calibration", "importance")
    }


def dps_runs():
    """The runs of dps methods (they answer the held-out questions for real)."""
    return [run for run in RUNS if config["methods"][run.method]["sampler"] == "dps"]


def dps_online_taus(task, model):
    """Per controller, the τ of the dps methods that run on this task and model: the
    replay adds them to its sweep, to compare the real runs with it."""
    taus = {}
    for run in dps_runs():
        if (run.task, run.model) == (task, model):
            method = config["methods"][run.method]
            taus.setdefault(method["controller"], []).append(method["tau"])
    return taus


def dps_generation_inputs(wildcards):
    """A dps method's controller file (and question embeddings, for mlp_hq)."""
    method = config["methods"][wildcards.method]
    if method["sampler"] != "dps":
        return {}
    controller = method["controller"]
    return {
        "controller": f"results/dps/{wildcards.task}/{wildcards.model}/controllers/"
        f"{controller}.pkl",
        **dps_embeddings_input(wildcards.task, wildcards.model, controller),
    }


def dps_generation_params(wildcards):
    """What a dps generation job needs besides its files: the pool and the schedule."""
    method = config["methods"][wildcards.method]
    study = config["studies"].get("dps")
    if method["sampler"] != "dps":
        return None
    return {
        "pool": study["pool"],
        "pool_method": decoding_method(config, wildcards.method),
        "schedule": {k: study[k] for k in ("k_start", "k_step", "k_max")},
    }


# Temperature reliability (rules/reliability.smk)


def reliability_shards():
    """The graded shards of the reliability study's tasks, models and settings."""
    study = config["studies"].get("reliability")
    if study is None:
        return []
    return shard_paths(
        "graded",
        [
            run
            for run in RUNS
            if run.task in study["tasks"]
            and run.model in study["models"]
            and run.method in study["methods"]
        ],
    )
