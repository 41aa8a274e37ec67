"""The toy model: a Qwen2-architecture causal LM of about a million parameters, or its sparse
twin, a Mixtral-architecture mixture of experts with as many active parameters per token.

Using a real architecture (not a bespoke one) means the toy model exercises the same
code as a hub model: ``AutoModelForCausalLM`` loading, the KV cache, layer truncation
and hooks on ``model.model.layers``.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2Config

from powersampling.errors import UserError
from powersampling.toy.shape import DEFAULT_MODEL_SHAPE
from powersampling.toy.tokenizer import EOS_ID, PAD_ID


def toy_model_config(
    vocab_size: int, *, eos_token_id: int = EOS_ID, pad_token_id: int = PAD_ID, **shape
) -> Qwen2Config | MixtralConfig:
    """A Qwen2 config of the default shape, with any of its keys overridden by ``shape``;
    a Mixtral config with as many active MLP parameters per token for ``architecture: moe``."""
    unknown = sorted(set(shape) - set(DEFAULT_MODEL_SHAPE))
    if unknown:
        raise UserError(
            f"unknown toy model shape keys {unknown}; known: {list(DEFAULT_MODEL_SHAPE)}"
        )
    shape = {**DEFAULT_MODEL_SHAPE, **shape}
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise UserError("toy model hidden_size must be a multiple of num_attention_heads")
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise UserError("toy model num_attention_heads must be a multiple of num_key_value_heads")
    architecture = shape.pop("architecture")
    n_experts, per_token = shape.pop("num_experts"), shape.pop("experts_per_token")
    common = {
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "bos_token_id": None,
        "use_cache": True,
    }
    if architecture == "dense":
        return Qwen2Config(**common, **shape)
    if architecture != "moe":
        raise UserError(f"toy model architecture must be dense or moe (got {architecture!r})")
    if not 1 <= per_token <= n_experts or shape["intermediate_size"] % per_token:
        raise UserError(
            "a toy mixture of experts needs 1 <= experts_per_token <= num_experts and an "
            "intermediate_size that experts_per_token divides"
        )
    shape["intermediate_size"] //= per_token  # per expert: as many active MLP parameters
    return MixtralConfig(
        **common, **shape, num_local_experts=n_experts, num_experts_per_tok=per_token
    )


def build_toy_model(config: Qwen2Config | MixtralConfig, seed: int):
    """A freshly initialised float32 model; the same seed gives the same weights."""
    # Initialisation draws from torch's global generator; fork it so the caller's
    # random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.float()
