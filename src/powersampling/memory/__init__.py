"""How much device memory a generation job needs, and how many rows it can decode together.

A generation job must choose its batch before it loads anything large, and must refuse
with the numbers when not even one row fits. This module computes that from the model's
``transformers`` config alone (no weights), the dtype, the method, the prompts' token
lengths, the requested batch size and the device's memory.

The model of one job, in bytes (``B`` rows, the longest prompt ``P``, ``N`` new tokens,
``kv`` = KV bytes per token = layers × 2 × kv_heads × head_dim × dtype bytes):

* **weights**: the exact parameter count (the model built on the meta device) × dtype bytes.
* **temperature / greedy** (:meth:`~powersampling.engine.DecodingEngine.extend`): one
  preallocated buffer of B × (P + N - 1) × kv (the last new token is never fed), written in
  place; it is allocated layer by layer as the prefill's cache is copied in and freed, so
  one layer of the prompt cache (B × P × kv / layers) exists twice for a moment. Rows that
  end move within the buffer, which allocates nothing. Models the buffer cannot serve
  (ALiBi, a sliding window shorter than a row, attention other than sdpa or eager) decode
  through a ``DynamicCache`` instead, which needs up to B × kv × (1 + (P + N) / layers)
  more than planned: one more column and one layer's concatenation copy.
* **power** (:class:`~powersampling.engine.RollingDecoder`): the preallocated buffer of
  B slots × ``buffer_columns(P + N)`` × kv; the prompts' caches (B × P × kv: one per
  distinct prompt, every prompt of the batch counted); the chains' answers, B × N × kv
  (``decoder.kv(row, skip=prompt)``), and one more answer while an accepted proposal
  replaces a chain's. With ``chain_store="host"`` (the sampler's ``kv_store``) the prompt
  caches and answers live in pinned host memory instead, copied into the buffer directly.
* **smc** (:class:`~powersampling.engine.particles.ParticleBatch`): B rows are B / n
  prompts of n particles; one preallocated buffer of B × (P + N) × kv, and while particles
  are resampled, one layer's copied rows. When prompts finish and at most half the rows are
  left, those move to the front of the buffer one layer at a time (no second buffer). A
  batch is a whole number of prompts: at least n rows, whatever batch was requested.
* **temporaries**: a decode step's logits (:func:`~powersampling.engine.pick_tokens` keeps
  about :data:`LOGITS_FLOAT32_COPIES` float32 copies of them), one layer's keys and values
  over the row window (an attention kernel's copy of a strided window, or the rolling
  buffer's layer-by-layer compaction or shrinking to its busy slots, which happen between
  steps and allocate no second buffer), and the prefill of the batch (activations of B × P
  tokens at the widest point of a layer, the padding mask, and the DynamicCache of
  B × P × kv it fills, which the decoders copy into their buffers). The prefill ends before
  the decode starts, so the peak takes the larger of the two phases, not their sum.
* **reserve**: :data:`RESERVE_BYTES` for the CUDA context and library workspaces, and
  :data:`HEADROOM` (a fraction of everything else) for allocator fragmentation.
* **host memory**: the weights (loading goes through host memory) and the reserve, plus,
  with host chain states, their caches × :data:`PINNED_ROUNDING`.

Every length is the longest prompt's (the engines pad a batch to its longest row), so the
plan is an upper bound for any batch of the given prompts (for the static engine, of a
model its buffer serves). ``tests/test_memory.py`` checks the buffers, transients and
peaks against the tensors a real run on a CPU creates.

``python -m powersampling.memory --configfile config/paper.yaml --gpu-gib 80`` prints the
batch that fits for every (model, method) of a config, from published shapes only.
"""

from powersampling.memory.cli import main
from powersampling.memory.configs import model_config, plan_generation
from powersampling.memory.devices import device_memory, meminfo_available
from powersampling.memory.items import MemoryItems, fits, host_need, memory_items
from powersampling.memory.plans import MemoryPlan, plan_memory
from powersampling.memory.resources import (
    PlannedJob,
    config_of_model,
    format_table,
    generation_mem_mb,
    plan_config,
)
from powersampling.memory.shapes import (
    JobShape,
    attention_dims,
    job_shape,
    kv_bytes_per_token,
    parameter_count,
    resolve_dtype,
)
from powersampling.memory.units import (
    CHAIN_STORES,
    DEFAULT_PROMPT_TOKENS,
    GIB,
    HEADROOM,
    LOGITS_FLOAT32_COPIES,
    PINNED_ROUNDING,
    RESERVE_BYTES,
    gib,
)

__all__ = [
    "CHAIN_STORES",
    "DEFAULT_PROMPT_TOKENS",
    "GIB",
    "HEADROOM",
    "LOGITS_FLOAT32_COPIES",
    "PINNED_ROUNDING",
    "RESERVE_BYTES",
    "JobShape",
    "MemoryItems",
    "MemoryPlan",
    "PlannedJob",
    "attention_dims",
    "device_memory",
    "fits",
    "format_table",
    "generation_mem_mb",
    "gib",
    "host_need",
    "job_shape",
    "kv_bytes_per_token",
    "main",
    "config_of_model",
    "meminfo_available",
    "memory_items",
    "model_config",
    "parameter_count",
    "plan_config",
    "plan_generation",
    "plan_memory",
    "resolve_dtype",
]
