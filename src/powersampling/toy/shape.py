"""The toy model's default shape, importable without loading any model code.

Config validation reads the context length from here to refuse, before any job runs, a
method whose token budget cannot fit the toy model.
"""

from __future__ import annotations

from typing import Any

# About 0.8M parameters: 4 blocks of width 128 with grouped-query attention. Eight heads of
# 16 rather than four of 32 (same parameters): writing a worked answer means finding the
# question's next number, and with more heads that lookup is learned in more training runs
# (greedy accuracy 24-42% over three runs, against 18-40% over two with four heads).
DEFAULT_MODEL_SHAPE = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 384,
    "max_position_embeddings": 384,
    # "dense" (Qwen2) or "moe" (Mixtral: each block's MLP is num_experts experts of
    # intermediate_size / experts_per_token, of which experts_per_token run per token, so a
    # token meets as many MLP parameters as in the dense model: the sparse twin).
    "architecture": "dense",
    "num_experts": 4,
    "experts_per_token": 2,
}
ARCHITECTURES = {"dense": "qwen2", "moe": "mixtral"}  # toy architecture -> model_type


def toy_context_length(settings: dict[str, Any]) -> int:
    """Context of the toy model trained with ``settings`` (its ``model_shape`` section)."""
    shape = {**DEFAULT_MODEL_SHAPE, **(settings.get("model_shape") or {})}
    return int(shape["max_position_embeddings"])
