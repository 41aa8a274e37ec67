"""How much device memory a generation job needs, and how many rows it can decode together.

A generation job must choose its batch before it loads anything large, and must refuse
with the numbers when not even one row fits. This module computes that from the model's
``transformers`` config alone (no weights), the dtype, the method, the prompts' token
lengths, the requested batch size and the device's memory.

The model of one job, in bytes (``B`` rows, the longest prompt ``P``, ``N`` new tokens,
``kv`` = KV bytes per token = layers × 2 × kv_heads × head_dim × dtype bytes):

* **weights**: the exact parameter count (the model built on the meta device) × dtype bytes.
* **temperature / greedy** (:meth:`~powersampling.engine.DecodingEngine.extend`): one
  ``DynamicCache`` of B × (P + N) × kv, which grows by concatenation, so one layer's keys
  and values exist twice for a moment.
* **power** (:class:`~powersampling.engine.RollingDecoder`): the preallocated buffer of
  B slots × ``buffer_columns(P + N)`` × kv; the prompts' caches (B × P × kv: one per
  distinct prompt, every prompt of the batch counted); the chains' answers, B × N × kv
  (``decoder.kv(row, skip=prompt)``), and one more answer while an accepted proposal
  replaces a chain's. With ``chain_store="host"`` (the sampler's ``kv_store``) the prompt
  caches and answers live in pinned host memory instead, copied into the buffer directly.
* **smc** (:class:`~powersampling.engine.particles.ParticleBatch`): B rows are B / n
  prompts of n particles; one preallocated buffer of B × (P + N) × kv, and while particles
  are resampled, one layer's copied rows. A batch is a whole number of prompts: at least n
  rows, whatever batch was requested.
* **temporaries**: a decode step's logits (:func:`~powersampling.engine.pick_tokens` keeps
  about :data:`LOGITS_FLOAT32_COPIES` float32 copies of them), one layer's keys and values
  over the row window (an attention kernel's copy of a strided window, or the rolling
  buffer's layer-by-layer compaction, which happens between steps), and the prefill of the
  batch (activations of B × P tokens at the widest point of a layer, the padding mask, and
  the DynamicCache of B × P × kv it fills). The prefill ends before the decode starts, so
  the peak takes the larger of the two phases, not their sum.
* **reserve**: :data:`RESERVE_BYTES` for the CUDA context and library workspaces, and
  :data:`HEADROOM` (a fraction of everything else) for allocator fragmentation.
* **host memory**: the weights (loading goes through host memory) and the reserve, plus,
  with host chain states, their caches × :data:`PINNED_ROUNDING`.

Every length is the longest prompt's (the engines pad a batch to its longest row), so the
plan is an upper bound for any batch of the given prompts.

``python -m powersampling.memory --configfile config/paper.yaml --gpu-gib 80`` prints the
batch that fits for every (model, method) of a config, from published shapes only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from powersampling.engine.rolling import KV_STORES, buffer_columns
from powersampling.errors import UserError
from powersampling.models import DTYPES

GIB = 2**30

# The CUDA context (about 0.5 GiB, already gone from a free-memory reading taken after CUDA
# started), cuBLAS/cuDNN workspaces and the allocator's rounding: one fixed amount.
RESERVE_BYTES = 1 * GIB
# PyTorch's caching allocator cannot always reuse freed blocks for tensors that grow by
# one column per step: 5% of everything except the reserve is kept free for that.
HEADROOM = 0.05
# pick_tokens holds, at its widest, the model's logits plus about six float32 [rows, vocab]
# tensors: log p, p, the entropy's p·log p (and its masked copy) or, when sampling, the
# scaled logits, log q, q and multinomial's working copy.
LOGITS_FLOAT32_COPIES = 6
# PyTorch's pinned (page-locked) host allocator rounds every block up to a power of two,
# so caches kept in host memory may take up to twice their size.
PINNED_ROUNDING = 2
# Prompt tokens assumed when planning a config before any prompt is tokenised.
DEFAULT_PROMPT_TOKENS = 512
CHAIN_STORES = KV_STORES  # where the power sampler keeps prompt and chain caches

_ROLLING_SAMPLERS = {"power"}  # samplers that decode through RollingDecoder


def gib(n: float) -> str:
    """Bytes as GiB with one decimal, the unit of every plan."""
    return f"{n / GIB:.1f} GiB"


# ------------------------------------------------------------------------------ shapes


def resolve_dtype(dtype: torch.dtype | str, config, device_type: str = "cuda") -> torch.dtype:
    """The dtype a model will be loaded in: as :func:`powersampling.models.load_model` does,
    ``auto`` is the checkpoint's dtype on a GPU and float32 on a CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device_type == "cpu":
            return torch.float32
        published = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(published, str):
            published = DTYPES.get(published)
        return published if isinstance(published, torch.dtype) else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[dtype]


_PARAMETER_COUNTS: dict[str, int] = {}  # config JSON -> parameters (meta builds are not free)


def parameter_count(config) -> int:
    """The exact number of parameters of the model ``config`` describes (built on the meta
    device, so a 7B model costs nothing; tied embeddings count once)."""
    key = f"{type(config).__name__}:{config.to_json_string(use_diff=False)}"
    if key not in _PARAMETER_COUNTS:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = AutoModelForCausalLM.from_config(config)
        _PARAMETER_COUNTS[key] = sum(p.numel() for p in model.parameters())
    return _PARAMETER_COUNTS[key]


def attention_dims(config) -> tuple[int, int, int, int]:
    """(layers, heads, kv_heads, head_dim) of a config, as the RollingDecoder reads them:
    kv_heads default to the heads, head_dim to hidden / heads."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, heads, kv_heads, head_dim


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to the cache: layers × 2 × kv_heads ×
    head_dim × dtype bytes."""
    layers, _, kv_heads, head_dim = attention_dims(config)
    return layers * 2 * kv_heads * head_dim * dtype.itemsize


@dataclass(frozen=True)
class JobShape:
    """Everything the memory of a job depends on, except the batch size and chain store."""

    sampler: str
    dtype: torch.dtype
    n_params: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    kv_per_token: int  # bytes, kv_bytes_per_token
    prompt_tokens: int  # the longest prompt
    max_new_tokens: int
    quantization: str | None = None  # "4bit": the linear layers' weights in NF4
    particles: int = 1  # rows per prompt: smc's particles, 1 for every other sampler

    @property
    def dtype_bytes(self) -> int:
        return self.dtype.itemsize

    @property
    def weights(self) -> int:
        if self.quantization is None:
            return self.n_params * self.dtype_bytes
        # NF4 stores 4 bits per weight plus one float32 scale per block of 64 (4.5 bits);
        # the embeddings and the LM head stay in the compute dtype (counted both, as if
        # untied: an upper bound).
        embeddings = 2 * self.vocab * self.hidden
        quantized = max(self.n_params - embeddings, 0) * 4.5 / 8
        return int(quantized + embeddings * self.dtype_bytes)

    @property
    def rolling(self) -> bool:
        """Whether the sampler decodes through the RollingDecoder (else DecodingEngine.extend)."""
        return self.sampler in _ROLLING_SAMPLERS

    @property
    def max_len(self) -> int:
        """The longest row: prompt + new tokens (the RollingDecoder's ``max_len``)."""
        return self.prompt_tokens + self.max_new_tokens


def job_shape(
    config,
    dtype: torch.dtype,
    method: dict[str, Any],
    prompt_lengths: Sequence[int],
    quantization: str | None = None,
) -> JobShape:
    """The shape of one generation job; the method's defaults are filled in by its sampler."""
    from powersampling.samplers import method_params

    if not prompt_lengths or min(prompt_lengths) < 1:
        raise UserError("a memory plan needs the token length of at least one non-empty prompt")
    params = method_params(method)
    text = config.get_text_config()
    layers, heads, kv_heads, head_dim = attention_dims(config)
    return JobShape(
        sampler=method["sampler"],
        dtype=dtype,
        n_params=parameter_count(config),
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab=text.vocab_size,
        kv_per_token=kv_bytes_per_token(config, dtype),
        prompt_tokens=max(prompt_lengths),
        max_new_tokens=params["max_new_tokens"],
        quantization=quantization,
        particles=params.get("particles", 1) if method["sampler"] == "smc" else 1,
    )


# ------------------------------------------------------------------------------ items


@dataclass(frozen=True)
class MemoryItems:
    """The memory of one job at a given batch, item by item, in bytes (0: not used)."""

    weights: int
    kv_cache: int  # temperature/greedy: the DynamicCache, rows × (prompt + budget)
    buffer: int  # power: the RollingDecoder's buffer, slots × buffer_columns(max_len); smc:
    # the ParticleBatch's, rows × max_len
    bookkeeping: int  # the engine's per-row token ids, statistics and masks
    prompt_caches: int  # power, device store: one per prompt of the batch
    chain_states: int  # power, device store: each chain's answer
    host_caches: int  # power, host store: the prompt caches and answers (+ one in transit)
    cache_transient: int  # temperature: one layer's concatenation; power: one answer replaced;
    # smc: one layer's rows copied by a resampling
    attention: int  # a decode step: one layer's keys/values window and float32 scores
    logits: int  # a decode step's logits and pick_tokens' float32 copies
    prefill: int  # the prefill phase: activations, padding mask, the prompt KV it builds
    reserve: int  # CUDA context and workspaces
    headroom: int  # allocator fragmentation

    @property
    def resident(self) -> int:
        """What stays allocated through both phases."""
        return self.weights + self.buffer + self.bookkeeping + self.prompt_caches

    @property
    def decode_phase(self) -> int:
        return (
            self.kv_cache + self.chain_states + self.cache_transient + self.attention + self.logits
        )

    @property
    def peak(self) -> int:
        """Device bytes at the busier phase (prefill and decode do not overlap)."""
        phase = max(self.decode_phase, self.prefill)
        return self.resident + phase + self.headroom + self.reserve


def _prefill_activations(shape: JobShape, rows: int) -> int:
    """Activations of one prefill forward over ``rows`` prompts of the longest length.

    Per token, at the widest moment of a layer: the residual stream and the normed input
    (2 hidden) plus the widest of RMSNorm's float32 upcast (4 hidden), attention (q, k, v,
    their rotary copies, output, and keys/values repeated to every head for grouped-query
    attention) and the MLP (gate, up, activation and product: 4 intermediate). sdpa is
    assumed memory-efficient (no P × P scores); its boolean padding mask is P × P per row.
    """
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    attention = 3 * q + 3 * kv + 2 * q
    per_token = 2 * shape.hidden + max(4 * shape.hidden, attention, 4 * shape.intermediate)
    tokens = rows * shape.prompt_tokens
    mask = rows * shape.prompt_tokens**2
    return tokens * per_token * shape.dtype_bytes + mask


def _logits(shape: JobShape, rows: int) -> int:
    return rows * shape.vocab * (shape.dtype_bytes + 4 * LOGITS_FLOAT32_COPIES)


def _attention(shape: JobShape, rows: int, window: int) -> int:
    """One layer of a decode step: its keys and values over the window (a kernel may copy a
    strided window) and float32 scores and probabilities (if sdpa falls back to math)."""
    keys_values = rows * window * shape.kv_per_token // shape.layers
    scores = 2 * rows * shape.heads * window * 4
    return keys_values + scores


def memory_items(shape: JobShape, batch: int, chain_store: str | None = None) -> MemoryItems:
    """Every item of a job decoding ``batch`` rows together (``chain_store``: power only)."""
    kv = shape.kv_per_token
    P, N, M = shape.prompt_tokens, shape.max_new_tokens, shape.max_len
    stats_bytes = 8 + 4 * 8  # per row and position: a token id and four float64 statistics
    items = dict.fromkeys((f.name for f in dataclasses.fields(MemoryItems)), 0)
    items["weights"] = shape.weights
    items["logits"] = _logits(shape, batch)
    items["attention"] = _attention(shape, batch, M)
    items["reserve"] = RESERVE_BYTES
    activations = _prefill_activations(shape, batch)
    if shape.rolling:
        if chain_store not in CHAIN_STORES:
            raise UserError(f"chain_store must be one of {CHAIN_STORES} (got {chain_store!r})")
        columns = buffer_columns(M)
        prompts, answers, replaced = batch * P * kv, batch * N * kv, N * kv
        items["buffer"] = batch * columns * kv
        items["bookkeeping"] = batch * (columns + M * stats_bytes)  # bool mask per column
        if chain_store == "device":
            items["prompt_caches"], items["chain_states"] = prompts, answers
            items["cache_transient"] = replaced
        else:  # pinned host memory, copied straight into the buffer when a row joins
            items["host_caches"] = prompts + answers + replaced
    elif shape.sampler == "smc":
        items["buffer"] = batch * M * kv
        items["bookkeeping"] = batch * M  # bool mask per column (token history: host)
        items["cache_transient"] = batch * M * kv // shape.layers
    else:
        items["kv_cache"] = batch * M * kv
        items["bookkeeping"] = batch * (8 * M + N * stats_bytes)  # int64 attention mask
        items["cache_transient"] = batch * M * kv // shape.layers
    items["prefill"] = batch * P * kv + activations + _logits(shape, batch)
    partial = MemoryItems(**items)
    items["headroom"] = int(HEADROOM * (partial.peak - RESERVE_BYTES))
    return MemoryItems(**items)


def host_need(items: MemoryItems) -> int:
    """Host memory of a job: the weights (loading goes through host memory, which the
    process may keep), the interpreter (the reserve) and any caches kept there."""
    return items.weights + RESERVE_BYTES + PINNED_ROUNDING * items.host_caches


def fits(
    shape: JobShape,
    batch: int,
    chain_store: str | None,
    device_bytes: int | None,
    host_bytes: int | None = None,
) -> bool:
    """Whether ``batch`` rows fit the device budget (and, for host chain states, the host's)."""
    items = memory_items(shape, batch, chain_store)
    if device_bytes is not None and items.peak > device_bytes:
        return False
    if items.host_caches and host_bytes is not None:
        return host_need(items) <= host_bytes
    return True


def _largest_batch(shape: JobShape, requested: int, store, device_bytes, host_bytes) -> int:
    """The largest batch <= ``requested`` that fits, 0 if none. Bisection: memory grows
    with the batch, so the batches that fit are 1..k. A batch is a whole number of prompts'
    rows (``shape.particles`` each), at least one prompt's."""
    unit = shape.particles
    lo, hi = 0, max(1, requested // unit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(shape, mid * unit, store, device_bytes, host_bytes):
            lo = mid
        else:
            hi = mid - 1
    return lo * unit


# ------------------------------------------------------------------------------ plans


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
    if not shape.rolling:
        stores = [None]
    elif chain_store == "auto":  # on a CPU, host memory is the device's: nothing to gain
        stores = list(CHAIN_STORES) if device_type == "cuda" else ["device"]
    elif chain_store in CHAIN_STORES:
        stores = [chain_store]
    else:
        raise UserError(f"chain_store must be auto, device or host (got {chain_store!r})")
    best = {s: _largest_batch(shape, batch_size, s, device_bytes, host_bytes) for s in stores}
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
    unit = shape.particles
    if batch == max(1, requested // unit) * unit:
        return "requested"
    over = memory_items(shape, batch + unit, store)
    if device_bytes is not None and over.peak > device_bytes:
        return "device memory"
    return "host memory"


def _reason(shape, best, store, limit, device_bytes, host_bytes) -> str:
    batch, unit = best[store], shape.particles
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
    unit = shape.particles
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


# ------------------------------------------------------------------------------ devices


def meminfo_available(text: str) -> int | None:
    """MemAvailable in bytes from the text of ``/proc/meminfo``, or None."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            value, *unit = line.split(":", 1)[1].split()
            return int(value) * (1024 if unit == ["kB"] else 1)
    return None


def _cgroup_free() -> int | None:
    """Room left under this process's cgroup (v2) memory limit, or None (no limit known):
    a Slurm job may have far less than the machine's MemAvailable."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return int(limit) - current if limit.isdigit() else None


def device_memory(device: torch.device | str) -> tuple[int | None, str]:
    """Memory a job may use on ``device`` and where the number comes from.

    CUDA: the free memory ``torch.cuda.mem_get_info`` reports. CPU: MemAvailable of
    /proc/meminfo (within the cgroup's limit, if any); None (unlimited) when unreadable.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}, {gib(total)} in all"
    if device.type == "cpu":
        try:
            available = meminfo_available(Path("/proc/meminfo").read_text())
        except OSError:
            available = None
        if available is None:
            return None, "MemAvailable unreadable: treated as unlimited"
        cgroup = _cgroup_free()
        if cgroup is not None and cgroup < available:
            return cgroup, "room under the cgroup's memory limit"
        return available, "MemAvailable of /proc/meminfo"
    return None, f"free memory of a {device.type} device is unknown: treated as unlimited"


# ------------------------------------------------------------------------------ configs


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


def _config_of_model(config: dict[str, Any], model: str):
    from powersampling.config import TOY_SOURCE, toy_settings

    source = config["models"][model]["source"]
    if source == TOY_SOURCE:
        from powersampling.toy.model import toy_model_config
        from powersampling.toy.tokenizer import VOCAB_SIZE

        shape = toy_settings(config, model).get("model_shape") or {}
        return toy_model_config(VOCAB_SIZE, **shape)
    revision = config["models"][model].get("revision")
    return model_config(source, revision=revision, local_files_only=True)


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
                shapes[model] = _config_of_model(config, model)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m powersampling.memory",
        description="The batch each generation job of a config can decode on a GPU of a "
        "given size (from published model shapes; no weights, no network).",
    )
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--schema", default="config/schema.yaml")
    parser.add_argument("--gpu-gib", type=float, required=True, help="device memory, GiB")
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=DEFAULT_PROMPT_TOKENS,
        help=f"assumed length of every prompt (default {DEFAULT_PROMPT_TOKENS})",
    )
    parser.add_argument(
        "--host-gib",
        type=float,
        default=None,
        help="host memory for chain states (default: the config's resources.generation_mem_mb)",
    )
    parser.add_argument("--verbose", action="store_true", help="print every plan in full")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from powersampling.config import load_config

    hf_logging.set_verbosity_error()  # config warnings are noise here
    try:
        config = load_config(args.configfile, args.schema)
        host = args.host_gib * GIB if args.host_gib is not None else None
        if host is None and "generation_mem_mb" in config.get("resources", {}):
            host = config["resources"]["generation_mem_mb"] * 2**20
        device = int(args.gpu_gib * GIB)
        jobs = plan_config(
            config,
            device,
            prompt_tokens=args.prompt_tokens,
            host_bytes=None if host is None else int(host),
            device_note=f"--gpu-gib {args.gpu_gib:g}",
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    host_text = gib(host) if host is not None else "unlimited"
    print(
        f"{args.configfile}: GPU {gib(device)}, prompts of {args.prompt_tokens} tokens, "
        f"host memory {host_text}"
    )
    print(format_table(jobs))
    for job in jobs:
        if args.verbose and job.plan is not None:
            print("\n" + job.plan.describe())
        elif job.plan is None:
            print(f"\n{job.model} / {job.method}: {job.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
