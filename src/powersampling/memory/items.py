"""The memory of one job at a given batch, item by item, for each decoder a sampler drives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from powersampling.engine.rolling import buffer_columns
from powersampling.engine.static_rows import static_buffer_columns
from powersampling.errors import UserError
from powersampling.memory.shapes import JobShape
from powersampling.memory.units import (
    CHAIN_STORES,
    HEADROOM,
    LOGITS_FLOAT32_COPIES,
    PINNED_ROUNDING,
    RESERVE_BYTES,
)


@dataclass(frozen=True)
class MemoryItems:
    """The memory of one job at a given batch, item by item, in bytes (0: not used)."""

    weights: int
    kv_cache: int  # temperature/greedy: the engine's buffer, rows × (prompt + budget - 1)
    buffer: int  # power: the RollingDecoder's buffer, slots × buffer_columns(max_len); smc:
    # the ParticleBatch's, rows × max_len
    bookkeeping: int  # the engine's per-row token ids, statistics and masks
    prompt_caches: int  # power, device store: one per prompt of the batch
    chain_states: int  # power, device store: each chain's answer
    host_caches: int  # power, host store: the prompt caches and answers (+ one in transit)
    cache_transient: int  # temperature: one layer of the prompt cache as it is copied into the
    # buffer; power: one answer replaced; smc: one layer's rows copied by a resampling (or
    # kept when prompts finish)
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


# Per row and position: a token id and four float64 statistics.
STATS_BYTES = 8 + 4 * 8


def _static_items(shape: JobShape, batch: int, chain_store) -> dict[str, int]:
    """DecodingEngine.extend: one preallocated buffer of rows × ``static_buffer_columns``,
    allocated layer by layer as the prefill's cache is copied in and freed, so one layer of
    the prompt cache exists twice for a moment. Rows that end move within the buffer
    (nothing is allocated), and a step writes in place (nothing is concatenated)."""
    kv, P, N = shape.kv_per_token, shape.prompt_tokens, shape.max_new_tokens
    columns = static_buffer_columns(P, N)
    return {
        "kv_cache": batch * columns * kv,
        "bookkeeping": batch * (columns + N * STATS_BYTES),  # bool mask per column
        "cache_transient": batch * P * kv // shape.layers,
    }


def _rolling_items(shape: JobShape, batch: int, chain_store) -> dict[str, int]:
    """RollingDecoder: its preallocated buffer, plus the prompts' caches and the chains'
    answers between proposals, on the device or in pinned host memory (``chain_store``).
    Shrinking the batch to its busy slots moves them within the buffer one layer at a time,
    like a compaction (in ``attention``), and growing it back allocates nothing."""
    if chain_store not in CHAIN_STORES:
        raise UserError(f"chain_store must be one of {CHAIN_STORES} (got {chain_store!r})")
    kv, P, N, M = shape.kv_per_token, shape.prompt_tokens, shape.max_new_tokens, shape.max_len
    columns = buffer_columns(M)
    prompts, answers, replaced = batch * P * kv, batch * N * kv, N * kv
    items = {
        "buffer": batch * columns * kv,
        "bookkeeping": batch * (columns + M * STATS_BYTES),  # bool mask per column
    }
    if chain_store == "device":
        items.update(prompt_caches=prompts, chain_states=answers, cache_transient=replaced)
    else:  # pinned host memory, copied straight into the buffer when a row joins
        items["host_caches"] = prompts + answers + replaced
    return items


def _particle_items(shape: JobShape, batch: int, chain_store) -> dict[str, int]:
    """ParticleBatch: one preallocated buffer of rows × (prompt + budget), and while
    particles are resampled, one layer's copied rows. When prompts finish, the kept rows
    (at most half) move to the front one layer at a time (``keep_rows``): less than that."""
    kv, M = shape.kv_per_token, shape.max_len
    return {
        "buffer": batch * M * kv,
        "bookkeeping": batch * M,  # bool mask per column (token history: host)
        "cache_transient": batch * M * kv // shape.layers,
    }


# A sampler's DECODER → the memory its decoder holds at a batch.
DECODER_ITEMS = {
    "static": _static_items,
    "rolling": _rolling_items,
    "particles": _particle_items,
}


def memory_items(shape: JobShape, batch: int, chain_store: str | None = None) -> MemoryItems:
    """Every item of a job decoding ``batch`` rows together (``chain_store``: for a decoder
    that keeps caches between proposals)."""
    if shape.decoder not in DECODER_ITEMS:
        raise UserError(f"no memory model for decoder {shape.decoder!r} ({shape.sampler})")
    items = dict.fromkeys((f.name for f in dataclasses.fields(MemoryItems)), 0)
    items["weights"] = shape.weights
    items["logits"] = _logits(shape, batch)
    items["attention"] = _attention(shape, batch, shape.max_len)
    items["reserve"] = RESERVE_BYTES
    items.update(DECODER_ITEMS[shape.decoder](shape, batch, chain_store))
    items["prefill"] = (
        batch * shape.prompt_tokens * shape.kv_per_token
        + _prefill_activations(shape, batch)
        + _logits(shape, batch)
    )
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


def largest_batch(shape: JobShape, requested: int, store, device_bytes, host_bytes) -> int:
    """The largest batch <= ``requested`` that fits, 0 if none. Bisection: memory grows
    with the batch, so the batches that fit are 1..k. A batch is a whole number of prompts'
    rows (``shape.rows_per_prompt`` each), at least one prompt's."""
    unit = shape.rows_per_prompt
    lo, hi = 0, max(1, requested // unit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(shape, mid * unit, store, device_bytes, host_bytes):
            lo = mid
        else:
            hi = mid - 1
    return lo * unit
