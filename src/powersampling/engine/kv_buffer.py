"""Decoding from one preallocated KV buffer written in place.

Shared by :class:`~powersampling.engine.rolling.RollingDecoder` and
:class:`~powersampling.engine.particles.ParticleBatch`: the cache object the model writes
each step's keys and values into (:class:`BufferCache`), the ready 4D attention mask a step
reads (:func:`decode_mask`), and the checks that a model honours both: an attention
implementation that takes the mask as given, and full attention over a row's whole span.
"""

from __future__ import annotations

import torch

from powersampling.errors import UserError


class BufferCache:
    """The KV cache of a decoder's batch: one preallocated buffer, written in place.

    ``buf`` is [layers, 2 (key, value), slots, kv_heads, columns, head_dim]. A decode step
    writes every row's new key/value at column ``hi`` and attends over columns ``lo..hi``.
    Writing in place avoids the copy of the whole cache that ``DynamicCache`` makes at every
    step (``torch.cat``), which dominates the cost of a step for small models.

    The model always gets position ids and a ready 4D mask, so it asks the cache for nothing
    but ``update`` (transformers >= 5.4), except that some models (OPT) read
    :meth:`get_seq_length` whatever they are given.
    """

    def __init__(self, buf: torch.Tensor):
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


def check_attention_implementation(cfg) -> str:
    """The model's attention implementation, if a ready 4D mask works with it (sdpa, eager)."""
    impl = cfg._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise UserError(
            f"decoding from preallocated caches needs 'sdpa' or 'eager' attention (the model uses "
            f"{impl!r})"
        )
    return impl


def decode_mask(window: torch.Tensor, attn_impl: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D attention mask of a decode step from the attendable columns ``window`` [S, W].

    A 4D mask is used as given by every model (transformers' masking_utils returns it
    unchanged), whatever mask builder the model would otherwise call.
    """
    if attn_impl == "sdpa":
        return window[:, None, None, :]  # [S, 1, 1, W] bool: True = attend
    mask = torch.zeros(window.shape, dtype=dtype, device=window.device)  # eager: additive
    return mask.masked_fill(~window, torch.finfo(dtype).min)[:, None, None, :]


def check_full_attention(cfg, max_len: int) -> None:
    """Refuse a model whose attention is not full over a row's span of ``max_len`` tokens.

    The rolling decoder builds one 4D mask for all layers, which overrides any sliding
    window a model would otherwise apply; so a layer type other than full attention, or a
    sliding window shorter than ``max_len``, would silently change the model. Configs that
    carry a window they do not use (Qwen2's ``use_sliding_window: false``) or one longer than
    any row (Phi-3.5-mini's 262144) are fine.
    """
    other = sorted({t for t in (getattr(cfg, "layer_types", None) or []) if t != "full_attention"})
    if other:
        raise UserError(
            "continuous batching supports only models whose layers all use full attention "
            f"(this one has {', '.join(other)} layers)"
        )
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False or window is None:
        return
    if window < max_len:
        raise UserError(
            f"the model attends through a sliding window of {window} tokens, shorter than the "
            f"rows of up to {max_len} tokens; continuous batching needs full attention over "
            "a row (shorten max_new_tokens or the prompts, or use the static engine)"
        )
