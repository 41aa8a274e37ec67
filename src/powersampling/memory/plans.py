"""The largest batch that fits a device (and host) budget, and the plan that says why."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from powersampling.errors import UserError
from powersampling.memory.items import MemoryItems, host_need, largest_batch, memory_items
from powersampling.memory.shapes import JobShape, job_shape, resolve_dtype
from powersampling.memory.units import CHAIN_STORES, HEADROOM, RESERVE_BYTES, gib

# Asked for on top of a plan's host need: the allocator's and the loader's slack.
HOST_MARGIN = 0.10


@dataclass(frozen=True)
class MemoryPlan:
    """A generation job's memory: every item in bytes, the batch chosen and why."""

    name: str  # what the plan is for, e.g. "phi-3.5-mini-instruct / power"
    shape: JobShape
    requested_batch: int
    batch: int
    chain_store: str | None  # the power sampler's kv_store ("device" | "host"), else None
    items: MemoryItems
    device_bytes: int | None  # the budget used; None: unlimited
    device_note: str  # where the budget comes from
    host_bytes: int | None  # the host budget for caches kept there; None: unlimited
    limit: str  # what bounds the batch: "requested", "device memory" or "host memory"
    reason: str

    @property
    def peak(self) -> int:
        """Device bytes at the job's busiest moment."""
        return self.items.peak

    @property
    def host_need(self) -> int:
        return host_need(self.items)

    def host_request_mb(self, on_cpu: bool = False) -> int:
        """MB of host memory a job with this plan asks the cluster for: the host need (on a
        CPU, where the device is the host, the whole peak) plus :data:`HOST_MARGIN`."""
        need = self.peak if on_cpu else self.host_need
        return math.ceil(need * (1 + HOST_MARGIN) / 2**20)

    def describe(self) -> str:
        """A short multi-line plan for the job's log."""
        s, it = self.shape, self.items
        budget = gib(self.device_bytes) if self.device_bytes is not None else "unlimited"
        store = f", prompt and chain caches on the {self.chain_store}" if self.chain_store else ""
        lines = [
            f"memory plan for {self.name} ({str(s.dtype).removeprefix('torch.')}): "
            f"batch {self.batch} of {self.requested_batch} requested{store}",
            f"  device budget       {budget} ({self.device_note})",
            f"  weights             {gib(it.weights)} ({s.n_params:,} parameters)",
            f"  KV per token        {s.kv_per_token / 1024:.1f} KiB ({s.layers} layers x 2 x "
            f"{s.kv_heads} KV heads x {s.head_dim} dims x {s.dtype_bytes} B)",
            f"  rows                prompt <= {s.prompt_tokens:,} + {s.max_new_tokens:,} "
            "new tokens",
        ]
        rows = [
            ("KV cache", it.kv_cache),
            ("rolling KV buffer", it.buffer),
            ("prompt caches", it.prompt_caches),
            ("chain states", it.chain_states),
            ("token buffers", it.bookkeeping),
            ("cache in transit", it.cache_transient),
            ("decode attention", it.attention),
            ("decode logits", it.logits),
        ]
        lines += [f"  {label:<19} {gib(n)}" for label, n in rows if n]
        busier = "prefill" if it.prefill > it.decode_phase else "decode"
        lines += [
            f"  prefill phase       {gib(it.prefill)} (not at once with the decode's "
            f"{gib(it.decode_phase)}; peak at the {busier})",
            f"  reserve + headroom  {gib(it.reserve + it.headroom)} "
            f"({gib(RESERVE_BYTES)} + {HEADROOM:.0%})",
            f"  peak                {gib(it.peak)}",
        ]
        if it.host_caches:
            host = gib(self.host_bytes) if self.host_bytes is not None else "unlimited"
            lines.append(
                f"  host caches         {gib(it.host_caches)} (prompts and chains; with pinned "
                f"rounding and the weights {gib(self.host_need)} of {host})"
            )
        lines.append(f"  why: {self.reason}")
        return "\n".join(lines)


def plan_memory(
    config,
    dtype: torch.dtype | str,
    method: dict[str, Any],
    prompt_lengths: Sequence[int],
    batch_size: int,
    device_bytes: int | None,
    *,
    device_note: str = "given",
    chain_store: str = "auto",
    host_bytes: int | None = None,
    name: str = "",
    device_type: str = "cuda",
    quantization: str | None = None,
) -> MemoryPlan:
    """The largest batch <= ``batch_size`` whose peak fits ``device_bytes`` (None: unlimited).

    ``config`` is the model's ``transformers`` config; ``method`` a config method
    (``{sampler: NAME, ...params}``); ``prompt_lengths`` the prompts' token counts;
    ``device_type`` resolves ``dtype="auto"`` as the model loader does. For the power
    sampler, ``chain_store="auto"`` keeps prompt and chain caches on the device unless
    keeping them in host memory (within ``host_bytes``, None: unlimited) lets a larger batch
    fit; ``"device"`` or ``"host"`` forces one.

    Raises UserError with the numbers when not even one row fits.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (got {batch_size})")
    dtype = resolve_dtype(dtype, config, device_type)
    shape = job_shape(config, dtype, method, prompt_lengths, quantization)
    name = name or f"{type(config).__name__} / {shape.sampler}"
    if not shape.keeps_caches:
        stores = [None]
    elif chain_store == "auto":  # on a CPU, host memory is the device's: nothing to gain
        stores = list(CHAIN_STORES) if device_type == "cuda" else ["device"]
    elif chain_store in CHAIN_STORES:
        stores = [chain_store]
    else:
        raise UserError(f"chain_store must be auto, device or host (got {chain_store!r})")
    best = {s: largest_batch(shape, batch_size, s, device_bytes, host_bytes) for s in stores}
    store = max(stores, key=lambda s: best[s])  # the first (device) wins ties
    batch = best[store]
    if batch == 0:
        raise UserError(_no_row_message(name, shape, stores[0], device_bytes, device_note))
    limit = _limit(shape, batch_size, batch, store, device_bytes)
    return MemoryPlan(
        name=name,
        shape=shape,
        requested_batch=batch_size,
        batch=batch,
        chain_store=store,
        items=memory_items(shape, batch, store),
        device_bytes=device_bytes,
        device_note=device_note,
        host_bytes=host_bytes,
        limit=limit,
        reason=_reason(shape, best, store, limit, device_bytes, host_bytes),
    )


def _limit(shape, requested, batch, store, device_bytes) -> str:
    """What stops the batch at ``batch``: the request, or the memory one more row (one more
    prompt's particles, for smc) lacks."""
    unit = shape.rows_per_prompt
    if batch == max(1, requested // unit) * unit:
        return "requested"
    over = memory_items(shape, batch + unit, store)
    if device_bytes is not None and over.peak > device_bytes:
        return "device memory"
    return "host memory"


def _reason(shape, best, store, limit, device_bytes, host_bytes) -> str:
    batch, unit = best[store], shape.rows_per_prompt
    if limit == "requested":
        why = "the requested batch fits"
        if unit > 1:
            why += f" (whole prompts of {unit} particles)"
        if device_bytes is None:
            why += " (device memory unknown: treated as unlimited)"
    else:
        over = memory_items(shape, batch + unit, store)
        if limit == "device memory":
            why = f"batch {batch + unit} would need {gib(over.peak)} > {gib(device_bytes)}"
        else:
            why = (
                f"batch {batch + unit} would need {gib(host_need(over))} of host memory "
                f"> {gib(host_bytes)}"
            )
    if store == "host":
        why += f"; with the caches on the device only {best['device']} fit"
    return why


def _no_row_message(name, shape: JobShape, store, device_bytes, device_note) -> str:
    unit = shape.rows_per_prompt
    one = memory_items(shape, unit, store)
    row = one.peak - one.weights - one.reserve
    what = "one row fits" if unit == 1 else f"one prompt's {unit} particles fit"
    rows = "one row" if unit == 1 else f"{unit} rows"
    return (
        f"{name}: not even {what} on the device: the weights take {gib(one.weights)} "
        f"({shape.n_params:,} parameters x {shape.dtype_bytes} B), KV is "
        f"{shape.kv_per_token / 1024:.1f} KiB per token, {rows} of {shape.prompt_tokens} "
        f"prompt + {shape.max_new_tokens} new tokens need {gib(row)} more, {gib(one.peak)} "
        f"in all with the {gib(RESERVE_BYTES)} reserve, but the device has "
        f"{gib(device_bytes)} ({device_note}). Use a larger device, a smaller dtype, or "
        "fewer new tokens."
    )
