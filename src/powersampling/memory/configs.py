"""Plans from a model source or a whole config: what a generation job and the CLI run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from powersampling.errors import UserError
from powersampling.memory.devices import device_memory
from powersampling.memory.plans import MemoryPlan, plan_memory
from powersampling.memory.units import DEFAULT_PROMPT_TOKENS, GIB


def model_config(source: str, *, revision: str | None = None, local_files_only=None):
    """The ``transformers`` config of a model source without any weights: the published
    shape of a known hub id (no network), a local folder's config.json, else the hub's
    config (or the local cache's with ``local_files_only``)."""
    from transformers import AutoConfig

    from powersampling.architectures import architecture_of_hub_id, published_config
    from powersampling.sources import is_local_path

    known = architecture_of_hub_id(source)
    if known is not None:
        return published_config(known)
    kwargs = {} if local_files_only is None else {"local_files_only": local_files_only}
    if not is_local_path(source):
        kwargs["revision"] = revision
    try:
        return AutoConfig.from_pretrained(str(Path(source).expanduser()), **kwargs)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot read the config of model {source!r}: {first}") from err


def plan_generation(
    source: str,
    method: dict[str, Any],
    prompt_ids: Sequence[Sequence[int]],
    batch_size: int,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    device: torch.device | str = "cuda",
    device_bytes: int | None = None,
    host_bytes: int | None = None,
    local_files_only: bool | None = None,
    name: str = "",
    quantization: str | None = None,
) -> MemoryPlan:
    """The plan a generation job makes before loading its model, from the model's config,
    the shard's prompts and the device's memory as it is now (``device_bytes``, when given,
    replaces the reading: e.g. to leave room for another process)."""
    device = torch.device(device)
    if device_bytes is None:
        device_bytes, note = device_memory(device)
    else:
        note = "given"
    return plan_memory(
        model_config(source, revision=revision, local_files_only=local_files_only),
        dtype,
        method,
        [len(p) for p in prompt_ids],
        batch_size,
        device_bytes,
        device_note=note,
        host_bytes=host_bytes,
        name=name,
        device_type=device.type,
        quantization=quantization,
    )


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
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    host_bytes: int | None = None,
    device_note: str = "given",
) -> list[PlannedJob]:
    """A plan for every (model, method) a validated config's experiments run, from shapes
    alone (published, local config.json, or the hub cache; never weights, never network).
    Every prompt is assumed ``prompt_tokens`` long; the batch asked for is
    ``generation.batch_size``."""
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
        try:
            plan = plan_memory(
                model_cfg,
                config["models"][model].get("dtype", "auto"),
                decoding_method(config, method),
                [prompt_tokens],
                batch_size,
                device_bytes,
                device_note=device_note,
                host_bytes=host_bytes,
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
    header = ("model", "method", "batch", "peak GiB", "caches", "host GiB", "limited by")
    rows = [header]
    for job in jobs:
        plan = job.plan
        if plan is None:
            rows.append((job.model, job.method, "0", "-", "-", "-", job.note.split(":")[0]))
            continue
        rows.append(
            (
                job.model,
                job.method,
                f"{plan.batch}/{plan.requested_batch}",
                f"{plan.peak / GIB:.1f}",
                plan.chain_store or "-",
                f"{plan.host_need / GIB:.1f}",
                plan.limit,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
