"""Continuous batching: rows join and leave one running decode batch at any step.

:class:`RollingDecoder` runs on the model of a :class:`~powersampling.engine.batch.DecodingEngine`.
Each row starts from a given KV cache of its prefix (so a prefix is never re-encoded), and the
cache of the whole batch is kept in one preallocated buffer written in place
(:class:`BufferCache`). The power sampler runs its Markov chains through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from powersampling.engine.batch import DecodingEngine
from powersampling.engine.tokens import TokenStats, check_generator, check_sampling, pick_tokens
from powersampling.errors import UserError


def buffer_columns(max_len: int) -> int:
    """Columns of a :class:`RollingDecoder`'s KV buffer for rows of at most ``max_len`` tokens."""
    return 2 * max_len


@dataclass
class Finished:
    """A row of a :class:`RollingDecoder` that ended at the last step (EOS or its budget)."""

    tag: object  # what the caller passed to :meth:`RollingDecoder.add`
    slot: int  # its batch row (its cache: :meth:`RollingDecoder.kv`, until the next step)
    tokens: list[int]  # new tokens, EOS included if emitted
    stats: TokenStats  # float64 [n] each, on the CPU (as in Extension)
    finish_reason: str  # "eos" | "length"
    step: int  # the decoder's step count when it ended


class BufferCache:
    """The KV cache of a :class:`RollingDecoder`: one preallocated buffer, written in place.

    ``buf`` is [layers, 2 (key, value), slots, kv_heads, columns, head_dim]. A decode step
    writes every row's new key/value at column ``hi`` and attends over columns ``lo..hi``.
    Writing in place avoids the copy of the whole cache that ``DynamicCache`` makes at every
    step (``torch.cat``), which dominates the cost of a step for small models.

    Only ``update`` is implemented: the model always gets position ids and a ready mask, so
    it asks the cache for nothing else (from transformers 5.4; earlier versions call
    ``get_seq_length`` to build cache positions).
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


class RollingDecoder:
    """Continuous batching: rows join and leave one running decode batch at any step.

    A row is given as the KV cache of its prefix minus the last token (``kv``, from
    :meth:`prefill` or :meth:`kv` of an earlier row) and that last token; it joins a free
    batch slot at the next :meth:`step` and then gets one new token per step until an EOS
    token or its budget. Rows wait in a queue when every slot is taken. Nothing is
    re-encoded: a row costs one decode step per new token, whatever its prefix length.

    Layout: all rows share the cache's column axis. A row joining with ``c`` cached columns
    is written right-aligned just before the next column to be filled, so the columns before
    it are masked for that row (left padding); the attention mask is kept per slot and
    position ids per row, so results do not depend on the padding (up to float rounding).
    The buffer holds twice the longest row; when it is full, the live columns are moved back
    to its start. When the queue is empty and at most half the slots are busy, the batch is
    shrunk to the busy slots (and grown again, up to ``slots``, when rows wait).

    Sampling is that of :meth:`DecodingEngine.extend` (temperature, top-k, greedy), with
    the same per-token ``log p``, ``log q``, entropy and top-1. All draws come from
    ``generator``; given its seed and the same sequence of calls, the output is the same.

    Supports causal LMs whose layers all use full attention through a ``past_key_values``
    ``update`` call (e.g. Llama, Qwen2), with ``sdpa`` or ``eager`` attention.
    """

    def __init__(
        self,
        engine: DecodingEngine,
        *,
        slots: int,
        max_len: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ):
        check_sampling(temperature, top_k, greedy)
        if slots < 1 or max_len < 2:
            raise UserError(
                f"a rolling batch needs slots >= 1 and max_len >= 2 (got {slots}, {max_len})"
            )
        check_generator(generator, engine.device)
        cfg = engine.model.config.get_text_config()
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            raise UserError(
                "continuous batching supports only models whose layers all use full attention"
            )
        self.attn_impl = cfg._attn_implementation
        if self.attn_impl not in ("sdpa", "eager"):
            raise UserError(
                "continuous batching needs 'sdpa' or 'eager' attention "
                f"(the model uses {self.attn_impl!r})"
            )
        self.engine = engine
        self.model = engine.model
        self.device = engine.device
        self.temperature, self.top_k, self.greedy, self.generator = (
            temperature,
            top_k,
            greedy,
            generator,
        )
        self.max_len = max_len  # longest row: cached prefix + new tokens
        self.n_layers = cfg.num_hidden_layers
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(self.model.parameters()).dtype
        self.eos = torch.tensor(engine.eos_token_ids, dtype=torch.long, device=self.device)
        self.n_slots = slots
        self.queue: list[tuple] = []
        self.tokens_prefilled = 0  # prefix tokens run through :meth:`prefill`
        self.tokens_decoded = 0
        self.steps = 0
        self._alloc(slots)

    # ------------------------------------------------------------------ state

    def _alloc(self, slots: int) -> None:
        d, C = self.device, buffer_columns(self.max_len)
        shape = (self.n_layers, 2, slots, self.kv_heads, C, self.head_dim)
        self.cache = BufferCache(torch.zeros(shape, dtype=self.dtype, device=d))
        self.cache.lo = self.cache.hi = self.max_len  # room on the left for any joining row
        self.mask = torch.zeros((slots, C), dtype=torch.bool, device=d)  # [S, C] attendable
        self.next_tok = torch.zeros(slots, dtype=torch.long, device=d)  # fed at the next step
        self.pos = torch.zeros(slots, dtype=torch.long, device=d)  # its position id
        self.n_gen = torch.zeros(slots, dtype=torch.long, device=d)
        self.budget = torch.ones(slots, dtype=torch.long, device=d)
        self.busy_t = torch.zeros(slots, dtype=torch.bool, device=d)
        self.tok_buf = torch.zeros((slots, self.max_len), dtype=torch.long, device=d)
        self.stats = TokenStats.zeros(slots, self.max_len, device=d)  # [S, max_len] each
        self.tags: list = [None] * slots  # None: free slot
        self.start = [0] * slots  # first cache column of each busy row

    @property
    def n_running(self) -> int:
        return sum(t is not None for t in self.tags)

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self.n_running > 0

    def empty_kv(self) -> torch.Tensor:
        """The cache of an empty prefix: [layers, 2, kv_heads, 0, head_dim]."""
        shape = (self.n_layers, 2, self.kv_heads, 0, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ rows in

    @torch.no_grad()
    def prefill(self, prefixes: list[list[int]]) -> list[torch.Tensor]:
        """The KV cache of each prefix, [layers, 2, kv_heads, len, head_dim] (empty ones allowed).

        Prefixes are left-padded and run in batches of the engine's ``max_batch_size``.
        """
        out = [self.empty_kv() for _ in prefixes]
        rows = [i for i, p in enumerate(prefixes) if p]
        self.engine.check_rows([prefixes[r] for r in rows], [0] * len(rows), "tokens")
        for chunk in self.engine.chunks(rows, [len(p) for p in prefixes]):
            ids, attn = self.engine.left_pad([prefixes[r] for r in chunk])  # [b, L]
            _, cache = self.engine.prefill(ids, attn)
            kv = torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])
            for j, r in enumerate(chunk):  # kv: [layers, 2, b, kv_heads, L, head_dim]
                out[r] = kv[:, :, j, :, ids.shape[1] - len(prefixes[r]) :].clone()
            self.tokens_prefilled += sum(len(prefixes[r]) for r in chunk)
        return out

    def add(self, kv: torch.Tensor, token: int, budget: int, tag) -> None:
        """Queue a row: cached prefix ``kv`` [layers, 2, kv_heads, c, head_dim], then ``token``
        (fed at position c), then up to ``budget`` >= 1 new tokens. ``tag`` names the row in
        :class:`Finished` (any object but None)."""
        c = kv.shape[-2]
        if budget < 1 or c + budget > self.max_len:
            raise UserError(
                f"a row with {c} cached tokens and budget {budget} does not fit "
                f"max_len {self.max_len} (the budget must be >= 1)"
            )
        if not 0 <= token < self.engine.vocab_size:
            raise UserError(
                f"token id {token} is outside the vocabulary of {self.engine.vocab_size}"
            )
        if tag is None:
            raise UserError("a row's tag must not be None")
        self.queue.append((kv, int(token), int(budget), tag))

    def _admit(self) -> None:
        """Move queued rows into free slots, right-aligned just before column ``hi``."""
        free = [s for s, t in enumerate(self.tags) if t is None]
        if len(self.queue) > len(free) and len(self.tags) < self.n_slots:
            free += self._grow(min(len(self.queue) - len(free), self.n_slots - len(self.tags)))
        if not free or not self.queue:
            return
        hi, buf = self.cache.hi, self.cache.buf
        joined = list(zip(free, self.queue, strict=False))
        self.queue = self.queue[len(joined) :]
        for s, (kv, _, _, tag) in joined:
            c = kv.shape[-2]
            buf[:, :, s, :, hi - c : hi] = kv
            self.mask[s] = False
            self.mask[s, hi - c : hi] = True
            self.tags[s], self.start[s] = tag, hi - c
        idx = torch.tensor([s for s, _ in joined], device=self.device)
        vals = torch.tensor(
            [[q[1], q[0].shape[-2], q[2]] for _, q in joined], device=self.device
        )  # token, position, budget
        self.next_tok[idx], self.pos[idx], self.budget[idx] = vals[:, 0], vals[:, 1], vals[:, 2]
        self.n_gen[idx] = 0
        self.busy_t[idx] = True
        self.cache.lo = min(self.cache.lo, min(self.start[s] for s, _ in joined))

    def _compact_columns(self) -> None:
        """The buffer is full: move the live columns (at most ``max_len``) back to its start."""
        c, M = self.cache, self.max_len
        shift = c.hi - M
        c.buf[..., :M, :] = c.buf[..., shift : c.hi, :].clone()
        self.mask[:, :M] = self.mask[:, shift : c.hi].clone()
        self.mask[:, M:] = False
        c.lo, c.hi = c.lo - shift, M
        self.start = [s - shift for s in self.start]

    def _shrink(self) -> None:
        """Keep only the busy slots (cheaper steps in the tail of a run)."""
        keep = [s for s, t in enumerate(self.tags) if t is not None]
        idx = torch.tensor(keep, device=self.device)
        c = self.cache
        c.buf = c.buf[:, :, idx]
        for name in ["mask", "next_tok", "pos", "n_gen", "budget", "busy_t", "tok_buf"]:
            setattr(self, name, getattr(self, name)[idx])
        self.stats = self.stats[idx]
        self.tags = [self.tags[s] for s in keep]
        self.start = [self.start[s] for s in keep]

    def _grow(self, n: int) -> list[int]:
        """Add ``n`` free slots (after a shrink, when rows wait); returns their indices."""
        S, c = len(self.tags), self.cache
        pad = c.buf.new_zeros((*c.buf.shape[:2], n, *c.buf.shape[3:]))
        c.buf = torch.cat([c.buf, pad], dim=2)
        for name in ["mask", "next_tok", "pos", "n_gen", "busy_t", "tok_buf"]:
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros((n, *t.shape[1:]))]))
        self.budget = torch.cat([self.budget, self.budget.new_ones(n)])
        self.stats = self.stats.map(lambda t: torch.cat([t, t.new_zeros((n, self.max_len))]))
        self.tags += [None] * n
        self.start += [c.hi] * n
        return list(range(S, S + n))

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self) -> list[Finished]:
        """Admit queued rows, run one decode step over the batch, return the rows that ended.

        The cache of a returned row stays readable with :meth:`kv` until the next call.
        """
        self._admit()
        busy = [s for s, t in enumerate(self.tags) if t is not None]
        if not busy:
            return []
        if not self.queue and 2 * len(busy) <= len(self.tags) and len(busy) < len(self.tags):
            self._shrink()
            busy = list(range(len(busy)))
        c = self.cache
        if c.hi == c.buf.shape[-2]:
            self._compact_columns()
        c.lo = min(self.start[s] for s in busy)  # columns left of every busy row: padding for all
        # Free slots also attend to their own column, so no row of the batch is fully masked.
        self.mask[:, c.hi] = True
        window = self.mask[:, c.lo : c.hi + 1]  # [S, W]
        if self.attn_impl == "sdpa":
            mask4 = window[:, None, None, :]
        else:  # eager: additive float mask
            mask4 = torch.zeros(window.shape, dtype=self.dtype, device=self.device)
            mask4 = mask4.masked_fill(~window, torch.finfo(self.dtype).min)[:, None, None, :]
        result = self.model(
            input_ids=self.next_tok[:, None],
            attention_mask={"full_attention": mask4},
            position_ids=self.pos[:, None],
            past_key_values=c,
            use_cache=True,
        )
        c.hi += 1
        self.steps += 1
        tok, picked = pick_tokens(
            result.logits[:, -1, :], self.temperature, self.top_k, self.greedy, self.generator
        )  # [S]
        S = len(self.tags)
        rows = torch.arange(S, device=self.device)
        col = self.n_gen.clamp(max=self.max_len - 1)
        self.tok_buf[rows, col] = tok
        self.stats[rows, col] = picked
        self.n_gen += self.busy_t
        self.pos += self.busy_t
        self.next_tok = tok
        is_eos = torch.isin(tok, self.eos)
        done = self.busy_t & (is_eos | (self.n_gen >= self.budget))
        done_slots = done.nonzero().squeeze(1).tolist()  # the one host sync per step
        if not done_slots:
            self.tokens_decoded += len(busy)
            return []
        self.tokens_decoded += len(busy)
        n_gen, eos_flags = self.n_gen[done_slots].tolist(), is_eos[done_slots].tolist()
        toks = self.tok_buf[done_slots].cpu()
        stats = self.stats[done_slots].cpu()
        self.busy_t[done_slots] = False
        finished = []
        for j, (s, n, e) in enumerate(zip(done_slots, n_gen, eos_flags, strict=True)):
            finished.append(
                Finished(
                    tag=self.tags[s],
                    slot=s,
                    tokens=toks[j, :n].tolist(),
                    stats=stats[j, :n].clone(),
                    finish_reason="eos" if e else "length",
                    step=self.steps,
                )
            )
            self.tags[s] = None
        return finished

    def kv(self, row: Finished) -> torch.Tensor:
        """The cache of a row that just ended: its prefix and every new token but the last,
        [layers, 2, kv_heads, c + n, head_dim] (a copy). Valid until the next :meth:`step`."""
        if row.step != self.steps:
            raise UserError("the cache of a finished row can be read only before the next step")
        return self.cache.buf[:, :, row.slot, :, self.start[row.slot] : self.cache.hi].clone()
