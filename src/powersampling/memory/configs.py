"""The plan a generation job makes from its model's source, before loading any weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from powersampling.errors import UserError
from powersampling.memory.devices import device_memory, host_allocation
from powersampling.memory.plans import MemoryPlan, plan_memory


class ShapeUnknown(UserError):
    """A model's config cannot be read before its weights are staged (a hub id of an
    unpublished architecture, not yet downloaded)."""


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
        raise ShapeUnknown(f"cannot read the config of model {source!r}: {first}") from err


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
    replaces the reading: e.g. to leave room for another process). Host memory for caches
    kept there is bounded by ``host_bytes``, by default the job's allocation
    (:func:`~powersampling.memory.devices.host_allocation`: what Slurm and the cgroup gave
    it), so the job never plans more host memory than it was given."""
    device = torch.device(device)
    if device_bytes is None:
        device_bytes, note = device_memory(device)
    else:
        note = "given"
    if host_bytes is None:
        host_bytes, _ = host_allocation()
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
