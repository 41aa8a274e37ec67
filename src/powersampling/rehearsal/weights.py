"""Random weights for a published architecture: transformers' usual init, drawn reproducibly.

Every tensor is drawn in fixed-size chunks, each from its own seed, in parallel: the same
seed gives the same weight bytes (same torch build), whatever the number of threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import transformers

from powersampling.models import DTYPES
from powersampling.seeding import derive_seed, torch_generator

_CHUNK = 1 << 24  # elements drawn from one generator


def random_model(config, *, seed: int, dtype: str = "bfloat16"):
    """A causal LM of ``config`` in ``dtype`` on the CPU with transformers' usual random
    init (linear and embedding weights N(0, initializer_range), biases 0, norms 1, the
    padding row 0), drawn once, in parallel, reproducibly from ``seed``."""
    from transformers.initialization import no_init_weights

    with no_init_weights():  # allocate only: every parameter is drawn below
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.tie_weights()  # skipped with the init above; a no-op unless tie_word_embeddings
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    draws, fills = [], []
    for name, param, kind in _parameter_kinds(model):
        if kind == "normal":
            flat = param.data.view(-1)
            for i, lo in enumerate(range(0, flat.numel(), _CHUNK)):
                draws.append((flat[lo : lo + _CHUNK], derive_seed(seed, name, i)))
        else:
            fills.append((param, 1.0 if kind == "ones" else 0.0))
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(lambda draw: _draw_normal(*draw, std=std), draws))
    for param, value in fills:
        param.data.fill_(value)
    for module in model.modules():  # as transformers does: the padding token embeds to 0
        if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    model.eval()
    return model


def _draw_normal(chunk: torch.Tensor, seed: int, *, std: float) -> None:
    chunk.normal_(0.0, std, generator=torch_generator(seed))


def _parameter_kinds(model):
    """``(name, parameter, "normal" | "zeros" | "ones")`` for every distinct parameter."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in kinds:
                continue  # tied: the first owner (the embedding) decides
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                kinds[id(param)] = "zeros" if pname == "bias" else "normal"
            elif "RMSNorm" in type(module).__name__ or "LayerNorm" in type(module).__name__:
                kinds[id(param)] = "ones" if pname == "weight" else "zeros"
            else:
                raise ValueError(f"no rule to initialise {type(module).__name__}.{pname}")
    return [(name, p, kinds[id(p)]) for name, p in model.named_parameters()]
