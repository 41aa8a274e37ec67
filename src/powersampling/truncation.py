"""Truncated models: the first L decoder blocks of a causal LM, optionally then its last block.

A truncated model runs the embeddings, decoder blocks 0..L-1 (and, with ``keep_last``, block
n-1), then the final norm and LM head, unchanged. Its accuracy against the blocks kept, beside
the full model's LogitLens, shows how much of the answer the early blocks already carry.

The model is truncated in place, so that the KV-cached engines run it like any other: the
block list is replaced by the kept blocks, each block's attention learns its new index (the
KV cache is indexed by it), and the config is made to describe the truncated model (block
count and every per-block field), with what was kept recorded in ``config.truncation`` for
logs and analyses.

A "truncation" that keeps every block is refused: a published experiment reported that
"layers 0-26 + last" beat the full model on a 28-block model, but blocks 0-26 plus block 27
are the full model under another name.
"""

from __future__ import annotations

from torch import nn

from powersampling.anatomy import FAMILIES, anatomy, model_type
from powersampling.errors import UserError

# Per-block lists in the config, one entry per block: transformers reads
# ``config.layer_types[i]`` for block i (Qwen2, Qwen3 and Qwen2-MoE pick block i's attention
# mask by it, and DynamicCache picks each cache layer's kind by it); ``mlp_layer_types`` is
# the same for feed-forward kinds (none of the supported families has it yet).
PER_BLOCK_LISTS = ("layer_types", "mlp_layer_types")


def kept_blocks(n_blocks: int, layers: int, keep_last: bool, name: str | None = None) -> list[int]:
    """Indices of the blocks a truncation keeps: 0..layers-1, then n_blocks-1 if ``keep_last``.

    Refuses (UserError) ``layers`` < 1, more layers than the model has, and a truncation that
    keeps every block, which is the full model (e.g. 27 layers + last of 28 blocks).
    """
    label = f"model {name!r}" if name else "the model"
    what = truncation_name("", layers, keep_last).lstrip("-")
    if layers < 1:
        raise UserError(f"a truncation keeps at least 1 layer (got layers={layers} for {label})")
    if layers > n_blocks:
        raise UserError(
            f"cannot keep {layers} layers of {label}: it has only {n_blocks} decoder blocks"
        )
    kept = list(range(layers))
    if keep_last and n_blocks - 1 not in kept:
        kept.append(n_blocks - 1)
    if len(kept) == n_blocks:
        fewer = (
            f"; keep at most {n_blocks - 2} layers + last, or {n_blocks - 1} without it"
            if n_blocks >= 3
            else ""
        )
        raise UserError(
            f"truncation {what} of {label} keeps all {n_blocks} of its decoder blocks "
            f"(blocks 0-{n_blocks - 1}): that is the full model under another name, not a "
            f"truncated model{fewer}"
        )
    return kept


def truncation_name(base: str, layers: int, keep_last: bool) -> str:
    """The name of a truncated model, e.g. ``toy-L2+last`` or ``toy-L2``."""
    return f"{base}-L{layers}{'+last' if keep_last else ''}"


def truncate_model(model, layers: int, keep_last: bool, *, name: str | None = None):
    """Truncate the loaded transformers causal LM ``model`` in place and return it.

    Keeps the blocks :func:`kept_blocks` names, renumbers their ``layer_idx`` (the KV cache
    layer each attention writes to), and updates the config: ``num_hidden_layers``, the
    per-block fields, and ``config.truncation = {"of_blocks": n, "kept": [...]}`` (indices in
    the original model, composed if the model was already truncated). Refuses models of an
    unsupported architecture and truncations that keep every block (UserError).
    """
    label = name or type(model).__name__
    parts = anatomy(model, what="truncation", name=name)
    n = parts.n_blocks
    config = model.config
    if getattr(config, "num_hidden_layers", n) != n:
        raise UserError(
            f"cannot truncate model {label!r}: its config says {config.num_hidden_layers} "
            f"decoder blocks but it has {n}"
        )
    kept = kept_blocks(n, layers, keep_last, name=label)
    base = model.get_decoder()
    blocks = nn.ModuleList([parts.blocks[i] for i in kept])
    for j, block in enumerate(blocks):
        for module in block.modules():
            index = getattr(module, "layer_idx", None)
            if isinstance(index, int) and not isinstance(index, bool):
                module.layer_idx = j
    setattr(base, FAMILIES[model_type(model)][0], blocks)
    # The base model and every block share the CausalLM's config object in these families;
    # should a loader ever give the base model its own, it is updated the same way.
    configs = {id(c): c for c in (config, getattr(base, "config", config))}
    for c in configs.values():
        _truncate_config(c, n, kept)
    if hasattr(base, "has_sliding_layers"):  # Qwen2, Qwen3: whether to build a sliding mask
        base.has_sliding_layers = "sliding_attention" in (
            getattr(config, "layer_types", None) or []
        )
    return model


def _truncate_config(config, n: int, kept: list[int]) -> None:
    """Make ``config`` describe the model with blocks ``kept`` of ``n``, renumbered 0..k-1.

    Fields not touched here need nothing: the other fields of the supported families (qwen2,
    qwen3, llama, phi3, opt, mixtral, olmoe, qwen2_moe, qwen3_moe) are the same for every
    block (widths, heads, experts, rope, sliding_window, OPT's layerdrop, which only acts in
    training).
    """
    for field in PER_BLOCK_LISTS:
        values = getattr(config, field, None)
        if isinstance(values, list | tuple) and len(values) == n:
            setattr(config, field, [values[i] for i in kept])

    # Qwen2, Qwen3, Qwen2-MoE: ``max_window_layers`` only derives ``layer_types`` when a config
    # is built without them (blocks i >= max_window_layers slide, for Qwen2-MoE also only
    # even i); the explicit ``layer_types`` kept above are what the model and a reload read.
    # For Qwen2/Qwen3 the count of kept blocks below the threshold is still exact, as kept
    # indices are increasing.
    window_layers = getattr(config, "max_window_layers", None)
    if isinstance(window_layers, int):
        config.max_window_layers = sum(i < window_layers for i in kept)

    # Qwen2-MoE, Qwen3-MoE: block i is built with a dense MLP instead of experts when
    # i is in ``mlp_only_layers`` or (i + 1) is not a multiple of ``decoder_sparse_step``;
    # read only when blocks are built (a reload from this config), so that rule is restated
    # for the new indices as an explicit list with a step of 1.
    if isinstance(getattr(config, "mlp_only_layers", None), list | tuple):
        step = getattr(config, "decoder_sparse_step", 1) or 1
        experts = getattr(config, "num_experts", 0) or 0
        dense = [
            j
            for j, i in enumerate(kept)
            if i in config.mlp_only_layers or not (experts > 0 and (i + 1) % step == 0)
        ]
        config.mlp_only_layers = dense
        config.decoder_sparse_step = 1

    # Per-block overrides of a heterogeneous config (transformers 5.24), keyed by block index.
    overrides = None
    if getattr(config, "is_heterogeneous", False):
        spec = config._heterogeneity_spec.per_layer_overrides
        overrides = {j: dict(spec[i]) for j, i in enumerate(kept) if i in spec}

    config.num_hidden_layers = len(kept)
    if overrides is not None:
        config.per_layer_config = overrides or None

    # Indices in the original model: a truncated model truncated again composes.
    before = getattr(config, "truncation", None)
    if isinstance(before, dict) and "kept" in before:
        config.truncation = {
            "of_blocks": before["of_blocks"],
            "kept": [before["kept"][i] for i in kept],
        }
    else:
        config.truncation = {"of_blocks": n, "kept": list(kept)}
