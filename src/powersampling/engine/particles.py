"""Particles: many continuations of a few prompts, decoded in lockstep in one batch.

Sequential Monte Carlo keeps N particles (partial answers) per prompt, extends them all by
one token per step, and now and then replaces some particles by copies of others
(resampling). :class:`ParticleBatch` is the tensor side of that: one row per particle, all
rows of a prompt starting from the prompt's one prefill, one preallocated KV buffer written
in place (:class:`~powersampling.engine.kv_buffer.BufferCache`), and row copies that move a
particle's cache to another row without recomputing it.

Layout: rows share the column axis. Prompts are left-padded to the longest one (P
columns); the token fed at step t is written at column P + t in every row, so all rows
advance together and a row's answer so far is columns P .. P + t - 1. Rows that have no
particle left (finished) keep being fed a pad token until they are dropped
(:meth:`ParticleBatch.keep_rows`): a step's cost is that of the batch's rows.
"""

from __future__ import annotations

import torch

from powersampling.engine.batch import DecodingEngine
from powersampling.engine.kv_buffer import BufferCache, check_buffer_decoding, decode_mask, kv_dims


class ParticleBatch:
    """``rows_per_prompt`` rows per prompt, decoded one token per :meth:`step`.

    Args:
        engine: the model and its tokens (EOS, pad).
        prompts: token ids per prompt (each non-empty); equal prompts are encoded once.
        rows_per_prompt: rows (particles) of each prompt; prompt g owns rows
            g·rows_per_prompt .. (g + 1)·rows_per_prompt - 1 at the start.
        max_new_tokens: the most tokens any row will be fed after its prompt.

    After construction, :attr:`logits` [rows, V] are the next-token logits of every row (the
    prompt's last position).
    """

    @torch.no_grad()
    def __init__(
        self,
        engine: DecodingEngine,
        prompts: list[list[int]],
        rows_per_prompt: int,
        max_new_tokens: int,
    ):
        cfg = engine.model.config.get_text_config()
        width = max(len(p) for p in prompts)
        self.attn_impl = check_buffer_decoding(cfg, width + max_new_tokens)  # before prefill
        self.engine, self.model, self.device = engine, engine.model, engine.device
        self.dtype = next(self.model.parameters()).dtype
        n_layers, kv_heads, head_dim = kv_dims(cfg)

        distinct: dict[tuple[int, ...], int] = {}
        for p in prompts:
            distinct.setdefault(tuple(p), len(distinct))
        source = torch.tensor(
            [distinct[tuple(p)] for p in prompts for _ in range(rows_per_prompt)],
            device=self.device,
        )  # [rows]: the distinct prompt of each row
        ids, attn = engine.left_pad([list(p) for p in distinct])  # [D, P]
        logits, cache = engine.prefill(ids, attn)  # [D, V]
        self.tokens_prefilled = int(attn.sum())

        rows = len(source)
        columns = width + max_new_tokens
        buf = torch.zeros(
            (n_layers, 2, rows, kv_heads, columns, head_dim), dtype=self.dtype, device=self.device
        )
        for i, layer in enumerate(cache.layers):  # keys, values: [D, kv_heads, P, head_dim]
            buf[i, 0, :, :, :width] = layer.keys.index_select(0, source)
            buf[i, 1, :, :, :width] = layer.values.index_select(0, source)
        del cache
        self.cache = BufferCache(buf)
        self.cache.lo, self.cache.hi = 0, width  # the next token is written at column ``width``
        self.mask = torch.zeros((rows, columns), dtype=torch.bool, device=self.device)
        self.mask[:, :width] = attn.bool().index_select(0, source)
        self.pos = attn.sum(-1).index_select(0, source)  # [rows] position of the next token
        self.logits = logits.index_select(0, source)  # [rows, V]
        self.owner = [g for g in range(len(prompts)) for _ in range(rows_per_prompt)]
        self.steps = 0

    @property
    def rows(self) -> int:
        return len(self.owner)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([rows] on the model's device); the next logits [rows, V]."""
        c = self.cache
        self.mask[:, c.hi] = True
        result = self.model(
            input_ids=tokens[:, None],
            attention_mask=decode_mask(self.mask[:, : c.hi + 1], self.attn_impl, self.dtype),
            position_ids=self.pos[:, None],
            use_cache=True,
            **{self.engine.cache_arg: c},
        )
        c.hi += 1
        self.pos += 1
        self.steps += 1
        self.logits = result.logits[:, -1, :]
        return self.logits

    @torch.no_grad()
    def copy_rows(self, dst: list[int], src: list[int]) -> None:
        """Row ``dst[i]`` becomes a copy of row ``src[i]`` (cache, mask, position, logits).

        Sources are read before any destination is written, so a row may be both. One layer
        at a time: the temporary copy is one layer's rows, never the whole cache.
        """
        if not dst:
            return
        d = torch.tensor(dst, device=self.device)
        s = torch.tensor(src, device=self.device)
        for layer in self.cache.buf:  # [2, rows, kv_heads, columns, head_dim]
            layer[:, d] = layer[:, s]
        self.mask[d] = self.mask[s]
        self.pos[d] = self.pos[s]
        self.logits[d] = self.logits[s]

    @torch.no_grad()
    def keep_rows(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` (in that order): later steps cost fewer rows.

        The kept rows move to the front of the buffer, which then ends after them: no new
        buffer is built (a copy would hold the kept rows twice at the peak). One layer at a
        time, as in :meth:`copy_rows`: the temporary copy is one layer's kept rows.
        """
        idx = torch.tensor(keep, device=self.device)
        n = len(keep)
        for layer in self.cache.buf:  # [2, rows, kv_heads, columns, head_dim]
            layer[:, :n] = layer[:, idx]
        self.cache.buf = self.cache.buf[:, :, :n]  # a view: later steps see n rows
        self.mask = self.mask.index_select(0, idx)
        self.pos = self.pos.index_select(0, idx)
        self.logits = self.logits.index_select(0, idx)
        self.owner = [self.owner[r] for r in keep]
