"""The running rows of one static batch: their KV cache, attention mask and positions.

:meth:`~powersampling.engine.batch.DecodingEngine.extend` prefills a batch of left-padded
prefixes and then feeds one token per running row per step; rows leave when they end. It
drives one of two implementations of the same three operations (the next-token ``logits``,
:meth:`step`, :meth:`keep`):

* :class:`BufferRows`: one preallocated buffer of prompt + budget columns, written in
  place (:class:`~powersampling.engine.kv_buffer.BufferCache`), with a ready 4D mask. A
  step costs the same whatever the context length: nothing is copied.
* :class:`GrowingRows`: transformers' ``DynamicCache``, which concatenates every step (a
  copy of the whole cache), for the models a buffer cannot serve
  (:func:`~powersampling.engine.kv_buffer.buffer_refusal`: ALiBi, sliding windows shorter
  than a row, attention other than sdpa or eager).

Both start from the engine's own prefill (the same forward, the same prompt keys), so the
first token of a row does not depend on which one decodes it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from powersampling.engine.kv_buffer import BufferCache, decode_mask, kv_dims


def static_buffer_columns(prompt_columns: int, max_new_tokens: int) -> int:
    """Columns of the static engine's buffer for a batch padded to ``prompt_columns`` whose
    largest budget is ``max_new_tokens`` (>= 1): the last new token is never fed."""
    return prompt_columns + max_new_tokens - 1


def _buffer_layer(layer: DynamicLayer, columns: int) -> torch.Tensor:
    """One layer of the buffer, [2, B, kv_heads, columns, head_dim], holding the prefill's
    keys and values [B, kv_heads, P, head_dim] in its first P columns."""
    B, kv_heads, P, head_dim = layer.keys.shape
    buf = layer.keys.new_zeros((2, B, kv_heads, columns, head_dim))
    buf[0, :, :, :P] = layer.keys
    buf[1, :, :, :P] = layer.values
    return buf


class BufferRows:
    """Rows decoding from one preallocated buffer of ``static_buffer_columns`` columns.

    Layout: the prefill's left-padded columns 0..P-1, then the token fed at step t is
    written at column P + t in every running row. The buffer is one tensor per layer,
    allocated as the prefill's ``DynamicCache`` is copied in and freed layer by layer, so
    the copy holds at most one layer of the prompt cache twice.

    Args:
        engine: the :class:`~powersampling.engine.batch.DecodingEngine` (model, cache
            argument).
        logits, cache: what ``engine.prefill(ids, attn)`` returned ([B, V] and the
            ``DynamicCache``, emptied here).
        attn: the prefill's attention mask [B, P].
        attn_impl: the model's attention implementation (sdpa or eager).
        max_new_tokens: the largest budget of the batch.
    """

    def __init__(self, engine, logits, cache: DynamicCache, attn, attn_impl: str, max_new_tokens):
        self.engine, self.model, self.attn_impl = engine, engine.model, attn_impl
        B, P = attn.shape
        columns = static_buffer_columns(P, max_new_tokens)
        layers = []
        for i in range(len(cache.layers)):
            layers.append(_buffer_layer(cache.layers[i], columns))
            cache.layers[i] = None  # frees this layer of the prompt cache (no other reference)
        self.dtype = layers[0].dtype
        self.cache = BufferCache(layers)
        self.cache.lo, self.cache.hi = 0, P  # the first fed token goes to column P
        self.mask = torch.zeros((B, columns), dtype=torch.bool, device=attn.device)  # attendable
        self.mask[:, :P] = attn.bool()
        self.pos = attn.sum(-1)  # [B] position of the token about to be fed
        self.logits = logits  # [B, V]

    @staticmethod
    def fits(cache: DynamicCache, cfg, rows: int, prompt_columns: int) -> bool:
        """Whether the prefill ``cache`` is what the buffer expects: one plain key/value
        tensor pair of [rows, kv_heads, P, head_dim] per layer (a model with another cache
        layout keeps its ``DynamicCache``)."""
        n_layers, kv_heads, head_dim = kv_dims(cfg)
        want = (rows, kv_heads, prompt_columns, head_dim)
        return len(cache.layers) == n_layers and all(
            type(layer) is DynamicLayer
            and tuple(layer.keys.shape) == want
            and tuple(layer.values.shape) == want
            for layer in cache.layers
        )

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the rows ``idx`` (increasing): they move to the front of the buffer, row
        by row and only their live columns, so nothing is allocated; the window then starts
        at the first column a kept row attends (left padding of the rows that left)."""
        c, n = self.cache, len(idx)
        moves = [(j, i) for j, i in enumerate(idx.tolist()) if i != j]  # i > j: disjoint rows
        for layer in c.buf:  # [2, rows, kv_heads, columns, head_dim]
            for j, i in moves:
                layer[:, j, :, c.lo : c.hi].copy_(layer[:, i, :, c.lo : c.hi])
        c.buf = [layer[:, :n] for layer in c.buf]
        self.mask, self.pos = self.mask[idx], self.pos[idx]
        c.lo += int(self.mask[:, c.lo : c.hi].any(0).int().argmax())  # first attended column

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed ``tok`` [b] (one per running row); the next-token logits [b, V]."""
        c = self.cache
        self.mask[:, c.hi] = True
        result = self.model(
            input_ids=tok[:, None],
            attention_mask=decode_mask(self.mask[:, c.lo : c.hi + 1], self.attn_impl, self.dtype),
            position_ids=self.pos[:, None],
            use_cache=True,
            **{self.engine.cache_arg: c},  # written in place at column hi
        )
        c.hi += 1
        self.pos = self.pos + 1
        self.logits = result.logits[:, -1, :]
        return self.logits


class GrowingRows:
    """Rows decoding through the prefill's ``DynamicCache``, which grows by concatenation.

    Same arguments as :class:`BufferRows` (less the attention implementation and budget).
    When rows leave, the cache keeps their rows only (a copy, layer by layer), and padding
    columns no remaining row needs are cut from plain full-attention layers.
    """

    def __init__(self, engine, logits, cache: DynamicCache, attn):
        self.engine, self.model = engine, engine.model
        self.cache, self.attn, self.logits = cache, attn, logits
        self.pos = attn.sum(-1)  # [B] position of the token about to be fed

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the rows ``idx`` and cut the leading columns that are padding for all."""
        self.cache.batch_select_indices(idx)
        self.attn, self.pos = self.attn[idx], self.pos[idx]
        if not all(type(layer) is DynamicLayer for layer in self.cache.layers):
            return  # sliding-window or other layers keep their layout
        n_pad = int((self.attn.any(0).cumsum(0) == 0).sum())  # leading all-pad columns
        if n_pad == 0:
            return
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel() > 0:
                layer.keys = layer.keys[:, :, n_pad:, :]
                layer.values = layer.values[:, :, n_pad:, :]
        self.attn = self.attn[:, n_pad:]

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed ``tok`` [b] (one per running row); the next-token logits [b, V]."""
        self.attn = torch.cat([self.attn, self.attn.new_ones((len(tok), 1))], dim=1)
        result = self.model(
            input_ids=tok[:, None],
            attention_mask=self.attn,
            position_ids=self.pos[:, None],
            use_cache=True,
            **{self.engine.cache_arg: self.cache},  # updated in place
        )
        self.pos = self.pos + 1
        self.logits = result.logits[:, -1, :]
        return self.logits
