"""What a rehearsal model of each architecture ships, and writing one as a model folder.

A :class:`RehearsalProfile` names an architecture's tokenizer, EOS, chat template and
published generation config; :func:`build_rehearsal_model` puts them together with the
published configuration and random weights (:mod:`.weights`) in a local model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from powersampling.architectures import PUBLISHED_CONFIGS, published_config
from powersampling.errors import UserError
from powersampling.io import atomic_dir
from powersampling.models import DTYPES
from powersampling.rehearsal.phi35 import (
    PHI35_CHAT_TEMPLATE,
    PHI35_ENDOFTEXT,
    phi35_standin_tokenizer,
)
from powersampling.rehearsal.qwen25 import (
    QWEN25_CHAT_TEMPLATE,
    QWEN25_ENDOFTEXT,
    QWEN25_MATH_CHAT_TEMPLATE,
    qwen25_tokenizer,
)
from powersampling.rehearsal.weights import random_model
from powersampling.seeding import derive_seed


@dataclass(frozen=True)
class RehearsalProfile:
    """What a rehearsal model of one architecture gets besides its config and weights."""

    tokenizer: str  # "qwen2.5" | "phi-3.5-standin"
    eos_token: str
    chat_template: str
    # generation_config.json as published, minus the transformers version. Only ids and
    # length defaults: nothing that would change how the workflow's samplers draw.
    generation: dict[str, Any] = field(default_factory=dict)


# Published Qwen2.5 base generation configs set bos/eos 151643, do_sample false and
# max_new_tokens 2048: no sampling defaults. (The instruct models add do_sample true,
# temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05 and eos [151645, 151643].)
_QWEN25_BASE_GENERATION = {
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "do_sample": False,
    "max_new_tokens": 2048,
}
# Phi-3.5-mini-instruct stops on <|end|>, <|assistant|> and <|endoftext|>.
_PHI35_GENERATION = {
    "bos_token_id": 1,
    "eos_token_id": [32007, 32001, 32000],
    "pad_token_id": 32000,
}

REHEARSAL_PROFILES: dict[str, RehearsalProfile] = {
    "qwen2.5-math-1.5b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_MATH_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "qwen2.5-math-7b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_MATH_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "qwen2.5-7b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "phi-3.5-mini-instruct": RehearsalProfile(
        "phi-3.5-standin", PHI35_ENDOFTEXT, PHI35_CHAT_TEMPLATE, _PHI35_GENERATION
    ),
}


def rehearsal_profile(architecture: str) -> RehearsalProfile:
    """The profile of ``architecture``, or a UserError naming the known ones."""
    if architecture not in REHEARSAL_PROFILES:
        known = ", ".join(REHEARSAL_PROFILES)
        raise UserError(f"no rehearsal model for architecture {architecture!r}; known: {known}")
    return REHEARSAL_PROFILES[architecture]


def rehearsal_tokenizer(architecture: str):
    """The tokenizer a rehearsal model of ``architecture`` ships (:mod:`.qwen25`, :mod:`.phi35`)."""
    profile = rehearsal_profile(architecture)
    if profile.tokenizer == "qwen2.5":
        return qwen25_tokenizer(eos_token=profile.eos_token, chat_template=profile.chat_template)
    return phi35_standin_tokenizer()


def build_rehearsal_model(
    architecture: str,
    out_dir: str | os.PathLike,
    *,
    num_hidden_layers: int | None = None,
    seed: int = 0,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Write a randomly initialised ``architecture`` (a name in ``PUBLISHED_CONFIGS``) with
    its tokenizer and generation config to ``out_dir``, atomically; returns its description
    (also saved as ``rehearsal.json``).

    ``num_hidden_layers`` cuts the depth (None: as published; 0 is allowed); widths and
    vocabulary stay as published. ``dtype`` is float32, bfloat16, float16 or auto (the
    published checkpoint's dtype). The same arguments give the same weight bytes (same
    torch build): every tensor is drawn in fixed-size chunks, each from its own seed.
    """
    start = time.perf_counter()
    profile = rehearsal_profile(architecture)
    if dtype == "auto":
        dtype = PUBLISHED_CONFIGS[architecture]["torch_dtype"]
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {['auto', *DTYPES]}")
    if num_hidden_layers is not None and num_hidden_layers < 0:
        raise UserError(f"num_hidden_layers must be >= 0, got {num_hidden_layers}")
    overrides = {} if num_hidden_layers is None else {"num_hidden_layers": num_hidden_layers}
    config = published_config(architecture, **overrides)
    tokenizer = rehearsal_tokenizer(architecture)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{len(tokenizer)} tokens do not fit {config.vocab_size} embedding rows")

    model = random_model(config, seed=derive_seed(seed, "rehearsal", architecture), dtype=dtype)
    model.generation_config = transformers.GenerationConfig(**profile.generation)
    info = {
        "architecture": architecture,
        "stands_in_for": PUBLISHED_CONFIGS[architecture]["hub_id"],
        "num_hidden_layers": config.num_hidden_layers,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "seed": seed,
        "tokenizer": profile.tokenizer,
        "tokenizer_size": len(tokenizer),
        "vocab_size": config.vocab_size,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)  # config.json, generation_config.json, safetensors
        tokenizer.save_pretrained(tmp)
        info["tokenizer_sha256"] = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
        info["seconds"] = round(time.perf_counter() - start, 1)
        (tmp / "rehearsal.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
