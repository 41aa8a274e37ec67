"""What a generation job asks the cluster for, from the same memory plan the job obeys.

The rule ``generate`` requests ``mem_mb`` = :func:`generation_mem_mb`: the host memory its
plan needs, planned before any job exactly as the job plans it (same model shape, dtype,
decoded method, requested batch, device budget ``generation.device_memory_gib`` and prompt
length bound ``generation.plan_prompt_tokens``), within the ceiling
``resources.generation_mem_mb``. A job on a GPU needs on the host its weights (loading goes
through host memory), the interpreter and libraries (the reserve) and any caches its plan
keeps there; a job on the CPU holds its whole plan in host memory. The job then bounds its
own plan by what it was given (:func:`~powersampling.memory.devices.host_allocation`), so
with prompts within the bound it picks the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from powersampling.errors import UserError
from powersampling.memory.configs import ShapeUnknown, model_config
from powersampling.memory.plans import HOST_MARGIN, MemoryPlan, plan_memory
from powersampling.memory.units import DEFAULT_PROMPT_TOKENS, GIB

MIB = 2**20


def runs_on_cpu(config: dict[str, Any]) -> bool:
    """Whether the config's generation jobs run on the CPU (no GPU requested, or cpu forced)."""
    return config["device"] == "cpu" or not config["resources"]["gpu"]


def rule_plan(config: dict[str, Any], model: str, method: dict[str, Any]) -> MemoryPlan:
    """The memory plan of a generation job of ``model`` and (decoded) ``method``, made from
    the config alone, as the job will make it."""
    generation, resources = config["generation"], config["resources"]
    device_gib = generation.get("device_memory_gib")
    entry = config["models"][model]
    return plan_memory(
        config_of_model(config, model),
        entry.get("dtype", "auto"),
        method,
        [generation["plan_prompt_tokens"]],
        generation["batch_size"],
        None if device_gib is None else int(device_gib * GIB),
        device_note="generation.device_memory_gib" if device_gib else "unknown: unlimited",
        host_bytes=resources["generation_mem_mb"] * MIB,
        name=f"{model} / {method['sampler']}",
        device_type="cpu" if runs_on_cpu(config) else "cuda",
        quantization=entry.get("quantization"),
    )


def generation_mem_mb(config: dict[str, Any], model: str, method: dict[str, Any]) -> int:
    """``mem_mb`` of a generation job (first attempt), or a UserError naming the ceiling
    when even the plan's smallest need exceeds it. A model whose shape is unknown before
    its download (a hub id of an unpublished architecture) gets the ceiling."""
    ceiling = config["resources"]["generation_mem_mb"]
    try:
        plan = rule_plan(config, model, method)
    except ShapeUnknown:
        return ceiling
    need = plan.host_request_mb(runs_on_cpu(config))
    if need > ceiling:
        raise UserError(
            f"generation jobs of {plan.name} need {need} MB of host memory "
            f"({plan.host_need / GIB:.1f} GiB by their memory plan, +{HOST_MARGIN:.0%}), "
            f"more than resources.generation_mem_mb ({ceiling}); raise it"
        )
    return need


@dataclass(frozen=True)
class PlannedJob:
    """One (model, method) of a config: its plan, or why there is none."""

    model: str
    method: str
    plan: MemoryPlan | None
    note: str = ""


def config_of_model(config: dict[str, Any], model: str):
    """The ``transformers`` config of a config's model, from what its source says without
    weights: the toy model's shape, a rehearsal model's published architecture, a local
    folder's config.json, a hub id's published shape or cached config."""
    from powersampling.sources import REHEARSAL_SOURCE, TOY_SOURCE, model_source, toy_settings

    source = model_source(config, model)
    if source.kind == TOY_SOURCE:
        from powersampling.toy.model import toy_model_config
        from powersampling.toy.tokenizer import VOCAB_SIZE

        shape = toy_settings(config, source.model).get("model_shape") or {}
        return toy_model_config(VOCAB_SIZE, **shape)
    entry = config["models"][source.model]
    if source.kind == REHEARSAL_SOURCE:
        from powersampling.architectures import published_config

        settings = entry["rehearsal"]
        depth = settings.get("num_hidden_layers")
        overrides = {} if depth is None else {"num_hidden_layers": depth}
        return published_config(settings["architecture"], **overrides)
    return model_config(source.source, revision=entry.get("revision"), local_files_only=True)


def plan_config(
    config: dict[str, Any],
    device_bytes: int | None,
    *,
    prompt_tokens: int | None = None,
    host_bytes: int | None = None,
    device_note: str = "given",
) -> list[PlannedJob]:
    """A plan for every (model, method) a validated config's experiments run, from shapes
    alone (published, local config.json, or the hub cache; never weights, never network).
    Every prompt is assumed ``prompt_tokens`` long (default ``generation.plan_prompt_tokens``,
    as the generate rule plans its host memory); the batch asked for is
    ``generation.batch_size``. Host memory for caches is bounded by ``host_bytes``, by
    default what each job is given (:func:`generation_mem_mb`): the plan each job makes."""
    prompt_tokens = prompt_tokens or config["generation"].get(
        "plan_prompt_tokens", DEFAULT_PROMPT_TOKENS
    )
    from powersampling.config import decoding_method, planned_runs

    batch_size = config["generation"]["batch_size"]
    pairs = dict.fromkeys((run.model, run.method) for run in planned_runs(config))
    shapes: dict[str, Any] = {}
    jobs = []
    for model, method in pairs:
        if model not in shapes:
            try:
                shapes[model] = config_of_model(config, model)
            except UserError as err:
                shapes[model] = err
        model_cfg = shapes[model]
        if isinstance(model_cfg, UserError):
            jobs.append(PlannedJob(model, method, None, f"shape unknown: {model_cfg}"))
            continue
        method_entry = decoding_method(config, method)
        try:
            plan = plan_memory(
                model_cfg,
                config["models"][model].get("dtype", "auto"),
                method_entry,
                [prompt_tokens],
                batch_size,
                device_bytes,
                device_note=device_note,
                host_bytes=host_bytes or generation_mem_mb(config, model, method_entry) * MIB,
                name=f"{model} / {method}",
                quantization=config["models"][model].get("quantization"),
            )
        except UserError as err:
            jobs.append(PlannedJob(model, method, None, str(err)))
            continue
        jobs.append(PlannedJob(model, method, plan))
    return jobs


def format_table(jobs: Sequence[PlannedJob]) -> str:
    """model × method → batch that fits, device peak, where the caches live, host memory
    needed (weights loaded through it, caches kept there with pinned rounding), what bounds
    the batch (one line per job)."""
    header = ("model", "method", "batch", "peak GiB", "caches", "host GiB", "mem_mb", "limited by")
    rows = [header]
    for job in jobs:
        plan = job.plan
        if plan is None:
            rows.append((job.model, job.method, "0", "-", "-", "-", "-", job.note.split(":")[0]))
            continue
        rows.append(
            (
                job.model,
                job.method,
                f"{plan.batch}/{plan.requested_batch}",
                f"{plan.peak / GIB:.1f}",
                plan.chain_store or "-",
                f"{plan.host_need / GIB:.1f}",
                str(plan.host_request_mb()),
                plan.limit,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
