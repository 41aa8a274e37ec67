"""The toy model: a Qwen2-architecture causal LM of about a million parameters.

Using a real architecture (not a bespoke one) means the toy model exercises the same
code as a hub model: ``AutoModelForCausalLM`` loading, the KV cache, layer truncation
and hooks on ``model.model.layers``.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from powersampling.errors import UserError
from powersampling.toy.shape import DEFAULT_MODEL_SHAPE
from powersampling.toy.tokenizer import EOS_ID, PAD_ID


def toy_model_config(
    vocab_size: int, *, eos_token_id: int = EOS_ID, pad_token_id: int = PAD_ID, **shape
) -> Qwen2Config:
    """A Qwen2 config of the default shape, with any of its keys overridden by ``shape``."""
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
    return Qwen2Config(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        use_cache=True,
        **shape,
    )


def build_toy_model(config: Qwen2Config, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised float32 model; the same seed gives the same weights."""
    # Initialisation draws from torch's global generator; fork it so the caller's
    # random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.float()
