"""Decoding from one preallocated KV buffer written in place.

Shared by :class:`~powersampling.engine.rolling.RollingDecoder`,
:class:`~powersampling.engine.particles.ParticleBatch` and the static engine's
:class:`~powersampling.engine.static_rows.BufferRows`: the cache object the model writes
each step's keys and values into (:class:`BufferCache`), the ready 4D attention mask a step
reads (:func:`decode_mask`), and the checks that a model honours both
(:func:`buffer_refusal`): no ALiBi biases built from a 2D mask, an attention implementation
that takes the mask as given, and full attention over a row's whole span.
"""

from __future__ import annotations

import torch

from powersampling.errors import UserError


class BufferCache:
    """The KV cache of a decoder's batch: one preallocated buffer, written in place.

    ``buf`` is [layers, 2 (key, value), slots, kv_heads, columns, head_dim], or a list of
    one such [2, slots, kv_heads, columns, head_dim] tensor per layer (the static engine
    allocates layer by layer, so that its prompt cache is freed as it is copied in). A step
    writes every row's new key/value at column ``hi`` and attends over columns ``lo..hi``.
    Writing in place avoids the copy of the whole cache that ``DynamicCache`` makes at every
    step (``torch.cat``), which dominates the cost of a step for small models.

    The model always gets position ids and a ready 4D mask, so it asks the cache for nothing
    but ``update`` (transformers >= 5.4), except that some models (OPT) read
    :meth:`get_seq_length` whatever they are given.
    """

    def __init__(self, buf: torch.Tensor | list[torch.Tensor]):
        self.buf = buf
        self.lo = 0
        self.hi = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        # key_states, value_states: [slots, kv_heads, 1, head_dim]
        layer = self.buf[layer_idx]
        layer[0, :, :, self.hi] = key_states[:, :, 0]
        layer[1, :, :, self.hi] = value_states[:, :, 0]
        return layer[0, :, :, self.lo : self.hi + 1], layer[1, :, :, self.lo : self.hi + 1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns the batch sees before this step's token: the window ``lo..hi-1``.

        Models use it only to derive position ids or mask sizes when not given them; the
        decoder gives both, so the value never changes a result, but it is the true one.
        """
        return self.hi - self.lo


def kv_dims(cfg) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a text config: what one layer's cache of a row holds
    per column. kv_heads default to the attention heads, head_dim to hidden / heads."""
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def uses_alibi(cfg) -> bool:
    """Whether the model adds ALiBi biases (BLOOM, MPT, Falcon with ``alibi``)."""
    attn_config = getattr(cfg, "attn_config", None)  # MPT keeps the flag there
    return (
        cfg.model_type == "bloom"
        or getattr(cfg, "alibi", False) is True
        or getattr(attn_config, "alibi", False) is True
    )


def buffer_refusal(cfg, max_len: int) -> str | None:
    """Why a model cannot decode from a preallocated buffer with a ready 4D mask over rows
    of up to ``max_len`` tokens, or None when it can. ``cfg``: the text config.

    * ALiBi models build their position biases from the 2D padding mask (its shape is
      unpacked as [batch, columns]), so a 4D mask fails at the first decode step.
    * Attention other than ``sdpa`` and ``eager`` (e.g. flash attention) does not take a
      4D mask as given.
    * The one 4D mask is used by every layer, so it would silently widen a sliding window
      shorter than a row, or any layer type other than full attention. Configs that carry a
      window they do not use (Qwen2's ``use_sliding_window: false``) or one longer than any
      row (Phi-3.5-mini's 262144) are fine.
    """
    if uses_alibi(cfg):
        return (
            f"{cfg.model_type} models add ALiBi position biases, built from a 2D padding mask; "
            "decoding from a preallocated KV buffer (power sampling, SMC) passes a ready 4D "
            "mask, which they cannot take (temperature and greedy sampling decode them)"
        )
    impl = cfg._attn_implementation
    if impl not in ("sdpa", "eager"):
        return (
            "decoding from preallocated caches needs 'sdpa' or 'eager' attention (the model "
            f"uses {impl!r})"
        )
    other = sorted({t for t in (getattr(cfg, "layer_types", None) or []) if t != "full_attention"})
    if other:
        return (
            "decoding from a preallocated KV buffer supports only models whose layers all use "
            f"full attention (this one has {', '.join(other)} layers)"
        )
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False or window is None or window >= max_len:
        return None
    return (
        f"the model attends through a sliding window of {window} tokens, shorter than the "
        f"rows of up to {max_len} tokens; decoding from a preallocated KV buffer needs full "
        "attention over a row (shorten max_new_tokens or the prompts, or use the static engine)"
    )


def check_buffer_decoding(cfg, max_len: int) -> str:
    """Refuse a model :func:`buffer_refusal` refuses (a :class:`UserError` naming why);
    return its attention implementation otherwise."""
    refusal = buffer_refusal(cfg, max_len)
    if refusal is not None:
        raise UserError(refusal)
    return cfg._attn_implementation


def decode_mask(window: torch.Tensor, attn_impl: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D attention mask of a decode step from the attendable columns ``window`` [S, W].

    A 4D mask is used as given by every model (transformers' masking_utils returns it
    unchanged), whatever mask builder the model would otherwise call.
    """
    if attn_impl == "sdpa":
        return window[:, None, None, :]  # [S, 1, 1, W] bool: True = attend
    mask = torch.zeros(window.shape, dtype=dtype, device=window.device)  # eager: additive
    return mask.masked_fill(~window, torch.finfo(dtype).min)[:, None, None, :]
