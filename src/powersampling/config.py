"""Config validation and run planning.

The workflow validates its config against ``config/schema.yaml`` before building the DAG:
defaults from the schema are filled in, and every problem is reported as one line naming
the key, so that a typo stops the run before any job starts. Planning (which shards of
which runs exist) is also here, so the Snakefile and the tests share one definition.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from powersampling.errors import UserError
from powersampling.samplers import method_params, method_schema, sampler_class
from powersampling.samplers.base import StrictValidator
from powersampling.seeding import derive_seed
from powersampling.sources import (
    BUILT_SOURCES,
    REHEARSAL_SOURCE,
    TOY_SOURCE,
    is_local_path,
    known_fields,
    model_context,
    model_depth,
)
from powersampling.studies import all_studies, planned_runs, study_schemas
from powersampling.tasks import get_task

# Task kinds whose data the workflow makes itself (rule synthetic_data), from a generator
# or a local file; the others are downloaded (rule download_dataset).
GENERATED_KINDS = ("synthetic", "pairs")


def _set_defaults(validator_class):
    """A validator class that also fills in ``default`` values of ``properties``."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _set_defaults(StrictValidator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        where = _key(error.absolute_path)
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}"
    return f"{_key(error.absolute_path)}: {error.message}"


def load_schema(path: str | os.PathLike) -> dict:
    """The config schema, with the methods' and studies' schemas built from their modules."""
    return with_method_schema(yaml.safe_load(Path(path).read_text()))


def with_method_schema(schema: dict) -> dict:
    """``schema`` whose ``$defs/method`` is :func:`powersampling.samplers.method_schema` and
    whose ``studies`` section lists :func:`powersampling.studies.study_schemas`: the
    samplers' parameter specs and the studies' schemas are the one definition of each."""
    schema = copy.deepcopy(schema)
    schema.setdefault("$defs", {})["method"] = method_schema()
    studies = schema.get("properties", {}).get("studies")
    if studies is not None:
        studies["properties"] = study_schemas()
    return schema


def validate_config(config: dict[str, Any], schema: dict | str | os.PathLike) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in, or raise UserError listing problems."""
    schema = with_method_schema(schema) if isinstance(schema, dict) else load_schema(schema)
    config = copy.deepcopy(dict(config))
    # Keys written on a truncation sweep besides `truncate`, before defaults fill others in.
    sweep_keys = {
        name: sorted(set(entry) - {"truncate"})
        for name, entry in (config.get("models") or {}).items()
        if isinstance(entry, dict) and "truncate" in entry
    }
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    # Conditional (if/then) branches report the same unknown key more than once.
    messages = list(dict.fromkeys(_describe(e) for e in errors))
    messages += [] if messages else _expand_truncations(config, sweep_keys)
    messages += [] if messages else _check_references(config)
    messages += [] if messages else _check_budgets(config)
    if not messages and not planned_runs(config):
        messages.append("experiments: no runs (no experiment, and no study that adds runs)")
    if messages:
        raise UserError("invalid config:\n  " + "\n  ".join(messages))
    return config


def _expand_truncations(config: dict[str, Any], sweep_keys: dict[str, list[str]]) -> list[str]:
    """Replace every truncation sweep under ``models`` by its models, in place.

    A sweep ``{truncate: {model: toy, layers: [1, 2], keep_last: true}}`` becomes the models
    ``toy-L1+last`` and ``toy-L2+last``: each a copy of the ``toy`` entry with a
    ``truncation`` section (``of``, ``layers``, ``keep_last``, and ``kept`` and ``depth``:
    the block indices kept and the full model's blocks, when the depth is known here). An
    experiment that names the sweep gets all of them. A truncation that keeps every block
    is refused: it is the full model under another name, and the full model is its own
    entry. Returns the problems found.
    """
    from powersampling.truncation import kept_blocks, truncation_name

    models = config["models"]
    problems, expanded, sweeps = [], {}, {}
    for name, entry in models.items():
        sweep = entry.get("truncate")
        if sweep is None:
            if "source" not in entry:
                problems.append(f"models.{name}: needs a source (or a truncate section)")
            expanded[name] = entry
            continue
        where = f"models.{name}.truncate"
        extra = sweep_keys.get(name)
        base_name = sweep["model"]
        base = models.get(base_name)
        if extra:
            problems.append(f"models.{name}: a truncation sweep takes no other keys ({extra})")
        elif base is None or "truncate" in base:
            problems.append(
                f"{where}.model: {base_name!r} is not a model entry with a source "
                f"(models: {', '.join(n for n, m in models.items() if 'truncate' not in m)})"
            )
        else:
            depth = model_depth(config, base_name)
            members = []
            for layers in sweep["layers"]:
                member = truncation_name(base_name, layers, sweep["keep_last"])
                try:
                    kept = (
                        kept_blocks(depth, layers, sweep["keep_last"], name=base_name)
                        if depth is not None
                        else None
                    )
                except UserError as err:
                    problems.append(f"{where}.layers: {err}")
                    continue
                if member in models or member in expanded:
                    problems.append(f"{where}: model name {member!r} is already taken")
                    continue
                expanded[member] = {
                    **copy.deepcopy(base),
                    "truncation": {
                        "of": base_name,
                        "layers": layers,
                        "keep_last": sweep["keep_last"],
                        "kept": kept,
                        "depth": depth,
                    },
                }
                members.append(member)
            sweeps[name] = members
    if problems:
        return problems
    config["models"] = expanded
    studies = [s for s in all_studies() if s.EXPANDS_TRUNCATIONS and s.name in config["studies"]]
    for section in [*config["experiments"], *(config["studies"][s.name] for s in studies)]:
        section["models"] = list(
            dict.fromkeys(m for name in section["models"] for m in sweeps.get(name, [name]))
        )
    return []


def _check_architectures(config: dict[str, Any]) -> list[str]:
    """Models that truncation, LogitLens or patching is asked to run on but cannot serve,
    when their architecture is known before any job (else the job refuses them)."""
    users: dict[str, list[str]] = {}
    for study in all_studies():
        if study.SCHEMA is None or study.name in config["studies"]:
            for model, what in study.model_uses(config):
                users.setdefault(model, []).append(what)
    if not users:
        return []
    from powersampling.anatomy import FAMILIES  # where blocks and norm are, per family

    problems = []
    for name, what in users.items():
        if name not in config["models"]:
            continue  # reported as an unknown name
        kind = known_fields(config, name).get("model_type")
        if kind is not None and kind not in FAMILIES:
            problems.append(
                f"models.{name}: {' and '.join(dict.fromkeys(what))} cannot run on its "
                f"architecture {kind!r} (supported: {', '.join(sorted(FAMILIES))})"
            )
    return problems


def _check_references(config: dict[str, Any]) -> list[str]:
    """Problems a schema cannot see: names that refer to nothing, missing local paths."""
    problems = []
    for i, experiment in enumerate(config["experiments"]):
        for section in ("tasks", "models", "methods"):
            for name in experiment[section]:
                if name not in config[section]:
                    known = ", ".join(sorted(config[section]))
                    problems.append(
                        f"experiments.{i}.{section}: {name!r} is not defined under "
                        f"'{section}' (defined: {known})"
                    )
    for name, task in config["tasks"].items():
        if task["kind"] == "pairs" and task["shard_size"] % 2:
            problems.append(
                f"tasks.{name}.shard_size: a pairs task's shards hold whole pairs (two rows "
                f"each); make it even, not {task['shard_size']}"
            )
    for name, model in config["models"].items():
        problems += _check_model(name, model, config)
    for name, method in config["methods"].items():
        problems += sampler_class(method["sampler"]).check_method(name, method, config)
    for study in all_studies():
        if study.SCHEMA is not None and study.name in config["studies"]:
            problems += study.check(config)
    problems += _check_architectures(config)
    for name, task in config["tasks"].items():
        if task["kind"] in GENERATED_KINDS and task.get("limit") is None:
            problems.append(f"tasks.{name}.limit: {task['kind']} tasks need a number of problems")
        if task["kind"] not in GENERATED_KINDS and "generator" in task:
            problems.append(
                f"tasks.{name}.generator: only {' and '.join(GENERATED_KINDS)} tasks take one"
            )
        source = task.get("source")
        if source and is_local_path(source) and not Path(source).expanduser().exists():
            problems.append(f"tasks.{name}.source: no file at {source}")
    return problems


def _check_model(name: str, model: dict[str, Any], config: dict[str, Any]) -> list[str]:
    from powersampling.architectures import PUBLISHED_CONFIGS

    tasks = config["tasks"]
    problems = []
    if model.get("quantization") and config["device"] == "cpu":
        problems.append(
            f"models.{name}.quantization: 4-bit loading needs a CUDA GPU, and device is cpu"
        )
    source = model["source"]
    if source not in BUILT_SOURCES and is_local_path(source):
        if not Path(source).expanduser().is_dir():
            problems.append(f"models.{name}.source: no model directory at {source}")
    rehearsal = model.get("rehearsal")
    if source == REHEARSAL_SOURCE:
        if rehearsal is None:
            problems.append(
                f"models.{name}.rehearsal: a rehearsal model needs an architecture "
                f"(one of {', '.join(PUBLISHED_CONFIGS)})"
            )
        elif rehearsal["architecture"] not in PUBLISHED_CONFIGS:
            problems.append(
                f"models.{name}.rehearsal.architecture: unknown {rehearsal['architecture']!r} "
                f"(known: {', '.join(PUBLISHED_CONFIGS)})"
            )
    elif rehearsal is not None:
        problems.append(f"models.{name}.rehearsal: only models with source 'rehearsal' take it")
    if source != TOY_SOURCE and "toy" in model:
        problems.append(f"models.{name}.toy: only models with source 'toy' take it")
    chat = model.get("chat_template")
    if isinstance(chat, list):
        for task in chat:
            if task not in tasks:
                problems.append(
                    f"models.{name}.chat_template: {task!r} is not a task of this config "
                    f"(tasks: {', '.join(sorted(tasks))})"
                )
    return problems


def _check_budgets(config: dict[str, Any]) -> list[str]:
    """Methods whose token budget cannot fit a model's context with even a one-token prompt.

    Where the context is known before any job (toy and local models). Prompt lengths are
    checked per problem by the generation job itself, before it loads the weights.
    """
    problems = []
    for i, experiment in enumerate(config["experiments"]):
        for model in experiment["models"]:
            context = model_context(config, model)
            if context is None:
                continue
            for method in experiment["methods"]:
                budget = method_params(config["methods"][method]).get("max_new_tokens")
                if budget is not None and budget + 1 > context:
                    problems.append(
                        f"methods.{method}.max_new_tokens: {budget} new tokens and a prompt "
                        f"cannot fit the context of model {model!r} ({context} tokens; "
                        f"experiments.{i})"
                    )
    return list(dict.fromkeys(problems))


def with_command_line_values(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the ``--config`` ``values`` merged over it, their nested scalars typed.

    Snakemake merges ``--config`` values over the config itself, but it reads a nested value
    (``--config generation='{batch_size: 8}'``) with YAML's base loader, which keeps every
    scalar a string. Here each such string is read as YAML reads it in a config file
    (``8`` → 8, ``true`` → True, ``null`` → None, ``0.5`` → 0.5); other strings stay.
    """
    merged = copy.deepcopy(dict(config))
    _merge(merged, _typed(dict(values)))
    return merged


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


def _merge(config: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def load_config(path: str | os.PathLike, schema: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read config {path}: {err}") from err
    return validate_config(raw, schema)


# --------------------------------------------------------------------------------------
# Planning


def run_seeds(config: dict[str, Any]) -> dict[tuple[str, str, str], list[int]]:
    """The seeds of every (task, model, method), in config order: the seeds of one such
    triple run in the same generation jobs (one model load for all of them)."""
    seeds: dict[tuple[str, str, str], list[int]] = {}
    for run in planned_runs(config):
        seeds.setdefault((run.task, run.model, run.method), []).append(run.seed)
    return seeds


def method_job_settings(config: dict[str, Any], method: str) -> dict | None:
    """What a generation job of ``method`` needs from the config beyond the method entry
    (its sampler's ``job_settings``)."""
    entry = config["methods"][method]
    return sampler_class(entry["sampler"]).job_settings(entry, config)


def decoding_method(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The method whose decoder and token budget ``method``'s rows use: itself, unless its
    sampler drives another one (its ``decoded_method``)."""
    entry = config["methods"][method]
    return sampler_class(entry["sampler"]).decoded_method(
        entry, method_job_settings(config, method)
    )


def task_seed(config: dict[str, Any], task: str) -> int:
    return derive_seed(config["seed"], "task", task)


def task_size(config: dict[str, Any], task: str) -> int:
    """Problems the workflow runs for ``task``, known from the config alone (no data read)."""
    return get_task(task, config["tasks"][task], seed=task_seed(config, task)).size


def n_shards(config: dict[str, Any], task: str) -> int:
    return math.ceil(task_size(config, task) / config["tasks"][task]["shard_size"])


def shard_rows(config: dict[str, Any], task: str, shard: int) -> tuple[int, int]:
    """Row range [start, stop) of ``shard`` in the task's data file."""
    size = task_size(config, task)
    shard_size = config["tasks"][task]["shard_size"]
    start = shard * shard_size
    if not 0 <= start < size:
        raise UserError(
            f"shard {shard} of task {task} has no problems "
            f"({size} problems, {shard_size} per shard)"
        )
    return start, min(start + shard_size, size)
