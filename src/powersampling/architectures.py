"""The published configurations of the models the shipped configs name, written out by hand.

Nothing here can download a checkpoint, yet the memory plan, the rehearsal models and the
benchmarks need the real shapes: layer counts, widths, key-value heads, vocabulary, context
and rotary settings, exactly as each model's ``config.json`` on the hub gives them.
"""

from __future__ import annotations

from typing import Any

from powersampling.errors import UserError

# Phi-3.5-mini's LongRoPE rescaling factors, one per rotary frequency (head_dim / 2 = 48),
# as microsoft/Phi-3.5-mini-instruct's config.json gives them (float32 values printed in
# full). Its rope_scaling has no short_mscale / long_mscale (Phi-3.5-MoE's has).
_PHI35_SHORT_FACTOR = [
    1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842,
    1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842,
    1.0699999332427979, 1.0999999046325684, 1.1099998950958252, 1.1599998474121094,
    1.1599998474121094, 1.1699998378753662, 1.2899998426437378, 1.339999794960022,
    1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788,
    1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745,
    2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
    2.0199997425079346, 2.0199997425079346, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756,
    2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533,
    2.729999542236328, 2.749999523162842, 2.8399994373321533,
]  # fmt: skip
_PHI35_LONG_FACTOR = [
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
    1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661,
    3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432,
    7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945,
    24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992,
    50.340003967285156, 50.45000457763672, 57.55000305175781, 57.93000411987305,
    58.21000289916992, 60.1400032043457, 62.61000442504883, 62.62000274658203,
    62.71000289916992, 63.1400032043457, 63.1400032043457, 63.77000427246094,
    63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
    64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938,
    64.4800033569336, 64.51000213623047, 64.52999877929688, 64.83999633789062,
]  # fmt: skip

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
