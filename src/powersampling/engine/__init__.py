"""Batched, KV-cached decoding with per-token log-probabilities.

Every sampler in the package decodes through one of these on a Hugging Face causal LM:

* :class:`DecodingEngine` (:mod:`.batch`): static batches. It extends many prefixes of
  different lengths at once until EOS or each row's budget, decoding from one preallocated
  KV buffer (:mod:`.static_rows`), and scores given continuations by teacher forcing.
* :class:`RollingDecoder` (:mod:`.rolling`): continuous batching on the same model. Rows
  join and leave one running decode batch at any step, each from given KV caches of its
  prefix (one or several pieces, e.g. a prompt's shared cache then an answer's own); the
  power sampler runs its Markov chains through it.
* :class:`ParticleBatch` (:mod:`.particles`): many continuations of a few prompts decoded in
  lockstep from one prefill per prompt, with row copies of the KV cache; SMC's particles.

All choose tokens with :func:`pick_tokens` (:mod:`.tokens`) and record, per new token, the
same :class:`TokenStats`: ``log p`` under the base model at T=1, ``log q`` under the
distribution the token was drawn from, and the entropy and top-1 probability of the base
distribution. Draws come from the ``torch.Generator`` passed in, which must live on the
model's device, or from one uniform per row of the row's own random stream (the power
sampler's chains, SMC's prompts), so that a row's draws do not depend on its batch.
"""

from powersampling.engine.batch import DecodingEngine, Extension
from powersampling.engine.kv_buffer import BufferCache
from powersampling.engine.particles import ParticleBatch
from powersampling.engine.rolling import Finished, RollingDecoder
from powersampling.engine.tokens import (
    TokenStats,
    check_generator,
    check_sampling,
    is_base_distribution,
    log_q,
    pick_tokens,
    row_budgets,
)

__all__ = [
    "BufferCache",
    "DecodingEngine",
    "Extension",
    "Finished",
    "ParticleBatch",
    "RollingDecoder",
    "TokenStats",
    "check_generator",
    "check_sampling",
    "is_base_distribution",
    "log_q",
    "pick_tokens",
    "row_budgets",
]
