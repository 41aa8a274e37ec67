"""Continuous batching: rows join and leave one running decode batch at any step.

:class:`RollingDecoder` runs on the model of a :class:`~powersampling.engine.batch.DecodingEngine`.
Each row starts from given KV caches of its prefix (so a prefix is never re-encoded), and the
cache of the whole batch is kept in one preallocated buffer written in place
(:class:`~powersampling.engine.kv_buffer.BufferCache`). The power sampler runs its Markov
chains through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from powersampling.engine.batch import DecodingEngine
from powersampling.engine.kv_buffer import BufferCache, check_buffer_decoding, decode_mask, kv_dims
from powersampling.engine.tokens import TokenStats, check_generator, check_sampling, pick_tokens
from powersampling.errors import UserError

# Where :meth:`RollingDecoder.prefill` and :meth:`RollingDecoder.kv` put the caches they
# return: on the model's device, or in host memory (pinned when the device is CUDA).
KV_STORES = ("device", "host")


def buffer_spare(max_len: int) -> int:
    """Columns of a :class:`RollingDecoder`'s buffer beyond one row: max(64, max_len // 8).

    The buffer is compacted (the live columns moved back) once every ``spare`` steps, and a
    compaction copies at most ``max_len`` columns, so it costs at most about 8 columns per step
    amortised: little next to a step's attention, which reads the whole live window.
    """
    return max(64, max_len // 8)


def buffer_columns(max_len: int) -> int:
    """Columns of a :class:`RollingDecoder`'s KV buffer for rows of at most ``max_len`` tokens.

    ``max_len + buffer_spare(max_len)``: one row's worth of columns plus a spare. Writing
    starts at column ``max_len`` (room on the left for any joining row); when it reaches the
    end, the live columns (at most ``max_len - 1``) are moved back so that writing resumes at
    column ``max_len``.
    """
    return max_len + buffer_spare(max_len)


@dataclass
class Finished:
    """A row of a :class:`RollingDecoder` that ended at the last step (EOS or its budget)."""

    tag: object  # what the caller passed to :meth:`RollingDecoder.add`
    slot: int  # its batch row (its cache: :meth:`RollingDecoder.kv`, until the next step)
    tokens: list[int]  # new tokens, EOS included if emitted
    stats: TokenStats  # float64 [n] each, on the CPU (as in Extension)
    finish_reason: str  # "eos" | "length"
    step: int  # the decoder's step count when it ended


class RollingDecoder:
    """Continuous batching: rows join and leave one running decode batch at any step.

    A row is given as the KV cache of its prefix minus the last token (``kv``, one tensor or
    a sequence of pieces, e.g. a prompt's shared cache then an answer's own cache, from
    :meth:`prefill` or :meth:`kv` of an earlier row) and that last token; it joins a free
    batch slot at the next :meth:`step` and then gets one new token per step until an EOS
    token or its budget. Rows wait in a queue when every slot is taken. Nothing is
    re-encoded: a row costs one decode step per new token, whatever its prefix length, and
    the pieces of its prefix are written one after the other into its slot (no concatenated
    copy is made).

    Layout: all rows share the cache's column axis. A row joining with ``c`` cached columns
    is written right-aligned just before the next column to be filled, so the columns before
    it are masked for that row (left padding); the attention mask is kept per slot and
    position ids per row, so results do not depend on the padding (up to float rounding).
    The buffer holds :func:`buffer_columns` (``max_len`` plus a spare); when it is full, the
    live columns are moved back, one layer at a time. When the queue is empty and at most
    half the slots are busy, the batch is shrunk to the busy slots (and grown again, up to
    ``slots``, when rows wait), within the same allocation.

    Sampling is that of :meth:`DecodingEngine.extend` (temperature, top-k, greedy), with
    the same per-token ``log p``, ``log q``, entropy and top-1. Draws come from
    ``generator`` (given its seed and the same sequence of calls, the output is the same),
    or, with ``row_streams``, from each row's own stream (a ``numpy.random.Generator``
    given to :meth:`add`; one uniform per new token, :func:`~powersampling.engine.tokens.
    inverse_cdf_draw`), so that what a row draws does not depend on the other rows.

    ``kv_store`` says where the caches this decoder hands out (:meth:`prefill`,
    :meth:`kv`) live: ``"device"`` (the model's), or ``"host"`` (CPU memory, pinned when the
    device is CUDA), which keeps many stored caches off the accelerator at the price of a
    copy to the device when a row joins. On a CPU model both are the same.

    Supports causal LMs whose layers all use full attention over a row's whole span through
    a cache ``update`` call and a 4D mask, with ``sdpa`` or ``eager`` attention: Qwen2,
    Llama, Phi-3, OPT, and the mixture-of-experts Qwen2-MoE, Qwen3-MoE, Mixtral and OLMoE.
    A model with sliding-window (or other non-full) attention layers, or a sliding window
    shorter than ``max_len``, is refused: the decoder's mask would silently widen its window.
    So are ALiBi models (BLOOM, MPT, Falcon with ``alibi``), which build their biases from a
    2D mask (:func:`~powersampling.engine.kv_buffer.buffer_refusal`).

    Positions shared by the batch: rotary scalings that depend on the largest position id of
    the batch (Phi-3's LongRoPE switches to its long factors once that passes
    ``original_max_position_embeddings``) see every busy row's position, so a row's log p
    can change while a longer row is busy, exactly as in transformers' own batched
    ``generate``. Free slots are reset to position 0, so a row that has ended no longer
    affects the others. A row that itself crosses the switch keeps the keys of its earlier
    tokens as they were computed (``generate`` re-encodes the whole sequence once there).
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
        row_streams: bool = False,
        kv_store: str = "device",
    ):
        check_sampling(temperature, top_k, greedy)
        if slots < 1 or max_len < 2:
            raise UserError(
                f"a rolling batch needs slots >= 1 and max_len >= 2 (got {slots}, {max_len})"
            )
        if kv_store not in KV_STORES:
            raise UserError(f"kv_store must be one of {KV_STORES} (got {kv_store!r})")
        check_generator(generator, engine.device)
        cfg = engine.model.config.get_text_config()
        self.attn_impl = check_buffer_decoding(cfg, max_len)
        self.engine = engine
        self.model = engine.model
        self.device = engine.device
        self.temperature, self.top_k, self.greedy, self.generator = (
            temperature,
            top_k,
            greedy,
            generator,
        )
        self.row_streams = row_streams and not greedy
        self.kv_store = kv_store
        self.max_len = max_len  # longest row: cached prefix + new tokens
        self.n_layers, self.kv_heads, self.head_dim = kv_dims(cfg)
        self.dtype = next(self.model.parameters()).dtype
        self.eos = torch.tensor(engine.eos_token_ids, dtype=torch.long, device=self.device)
        self.n_slots = slots
        self.queue: list[tuple] = []
        self.tokens_prefilled = 0  # prefix tokens run through :meth:`prefill`
        self.tokens_decoded = 0
        self.steps = 0
        self.compactions = 0
        self._alloc(slots)

    # ------------------------------------------------------------------ state

    def _alloc(self, slots: int) -> None:
        d, C = self.device, buffer_columns(self.max_len)
        shape = (self.n_layers, 2, slots, self.kv_heads, C, self.head_dim)
        # The whole allocation: shrinking and growing the batch take views of its first slots.
        self.slot_storage = torch.zeros(shape, dtype=self.dtype, device=d)
        self.cache = BufferCache(self.slot_storage)
        self.cache.lo = self.cache.hi = self.max_len  # room on the left for any joining row
        self.mask = torch.zeros((slots, C), dtype=torch.bool, device=d)  # [S, C] attendable
        self.next_tok = torch.zeros(slots, dtype=torch.long, device=d)  # fed at the next step
        self.pos = torch.zeros(slots, dtype=torch.long, device=d)  # its position id (free: 0)
        self.n_gen = torch.zeros(slots, dtype=torch.long, device=d)
        self.budget = torch.ones(slots, dtype=torch.long, device=d)
        self.busy_t = torch.zeros(slots, dtype=torch.bool, device=d)
        self.tok_buf = torch.zeros((slots, self.max_len), dtype=torch.long, device=d)
        self.stats = TokenStats.zeros(slots, self.max_len, device=d)  # [S, max_len] each
        self.tags: list = [None] * slots  # None: free slot
        self.streams: list = [None] * slots  # each busy row's random stream (row_streams)
        self.start = [0] * slots  # first cache column of each busy row

    @property
    def n_running(self) -> int:
        return sum(t is not None for t in self.tags)

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self.n_running > 0

    def _new_kv(self, columns: int) -> torch.Tensor:
        """An uninitialised cache of ``columns`` tokens in the store:
        [layers, 2, kv_heads, columns, head_dim]."""
        shape = (self.n_layers, 2, self.kv_heads, columns, self.head_dim)
        if self.kv_store == "device":
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        return torch.empty(shape, dtype=self.dtype, pin_memory=self.device.type == "cuda")

    def empty_kv(self) -> torch.Tensor:
        """The cache of an empty prefix: [layers, 2, kv_heads, 0, head_dim]."""
        return self._new_kv(0)

    # ------------------------------------------------------------------ rows in

    @torch.no_grad()
    def prefill(self, prefixes: list[list[int]]) -> list[torch.Tensor]:
        """The KV cache of each prefix, [layers, 2, kv_heads, len, head_dim] (empty ones allowed),
        in the decoder's ``kv_store``.

        Prefixes are left-padded and run in batches of the engine's ``max_batch_size``; each
        row's columns are copied out of the batch cache layer by layer (no stacked copy).
        """
        out = [self.empty_kv() for _ in prefixes]
        rows = [i for i, p in enumerate(prefixes) if p]
        self.engine.check_rows([prefixes[r] for r in rows], [0] * len(rows), "tokens")
        for chunk in self.engine.chunks(rows, [len(p) for p in prefixes]):
            ids, attn = self.engine.left_pad([prefixes[r] for r in chunk])  # [b, L]
            _, cache = self.engine.prefill(ids, attn)
            width = ids.shape[1]
            for j, r in enumerate(chunk):
                n = len(prefixes[r])
                kv = self._new_kv(n)
                for i, layer in enumerate(cache.layers):  # keys, values: [b, kv_heads, L, hd]
                    kv[i, 0].copy_(layer.keys[j, :, width - n :])
                    kv[i, 1].copy_(layer.values[j, :, width - n :])
                out[r] = kv
            del cache
            self.tokens_prefilled += sum(len(prefixes[r]) for r in chunk)
        return out

    def add(
        self,
        kv: torch.Tensor | Sequence[torch.Tensor],
        token: int,
        budget: int,
        tag,
        stream: np.random.Generator | None = None,
    ) -> None:
        """Queue a row: cached prefix ``kv``, then ``token`` (fed at position c), then up to
        ``budget`` >= 1 new tokens. ``tag`` names the row in :class:`Finished` (any object
        but None). ``stream``: the row's random stream, required with ``row_streams``.

        ``kv`` is one cache [layers, 2, kv_heads, c, head_dim] or a sequence of such pieces
        whose columns add up to c (e.g. a prompt's cache, then an answer's); pieces may live
        on the device or in host memory, and are only read when the row joins the batch.
        """
        pieces = [kv] if isinstance(kv, torch.Tensor) else list(kv)
        want = (self.n_layers, 2, self.kv_heads, self.head_dim)
        for p in pieces:
            if p.ndim != 5 or (*p.shape[:3], p.shape[4]) != want:
                raise UserError(
                    f"a cache piece of shape {tuple(p.shape)} does not fit this model "
                    f"(want [layers, 2, kv_heads, columns, head_dim] = {want[:3]} + [c] + "
                    f"[{want[3]}])"
                )
        c = sum(p.shape[-2] for p in pieces)
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
        if self.row_streams and stream is None:
            raise UserError("this decoder draws from each row's own stream: give add() one")
        self.queue.append((pieces, c, int(token), int(budget), tag, stream))

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
        for s, (pieces, c, _, _, tag, stream) in joined:
            col = hi - c
            for p in pieces:  # one after the other; a host piece is copied to the device here
                w = p.shape[-2]
                if w:
                    buf[:, :, s, :, col : col + w].copy_(p, non_blocking=True)
                col += w
            self.mask[s] = False
            self.mask[s, hi - c : hi] = True
            self.tags[s], self.start[s], self.streams[s] = tag, hi - c, stream
        idx = torch.tensor([s for s, _ in joined], device=self.device)
        vals = torch.tensor([[q[2], q[1], q[3]] for _, q in joined], device=self.device)
        # token, position, budget
        self.next_tok[idx], self.pos[idx], self.budget[idx] = vals[:, 0], vals[:, 1], vals[:, 2]
        self.n_gen[idx] = 0
        self.busy_t[idx] = True
        self.cache.lo = min(self.cache.lo, min(self.start[s] for s, _ in joined))

    def _compact_columns(self, lo: int) -> None:
        """The buffer is full: move the live columns ``lo..hi-1`` back so that ``hi`` becomes
        ``max_len`` again (every busy row starts at or after ``lo``).

        Layer by layer: when the old and new places overlap, the temporary copy is one
        layer's live columns, never a second copy of the whole buffer.
        """
        c, M = self.cache, self.max_len
        shift = c.hi - M
        new_lo = lo - shift  # >= 1: a busy row spans at most max_len - 1 columns before hi
        for layer in c.buf:  # [2, S, kv_heads, C, head_dim]
            src = layer[..., lo : c.hi, :]
            layer[..., new_lo:M, :] = src.clone() if lo < M else src
        self.mask[:, new_lo:M] = self.mask[:, lo : c.hi].clone()
        self.mask[:, :new_lo] = False
        self.mask[:, M:] = False
        c.lo, c.hi = new_lo, M
        self.start = [s - shift for s in self.start]
        self.compactions += 1

    def _shrink(self) -> None:
        """Keep only the busy slots (cheaper steps in the tail of a run).

        The busy slots' live columns move to the front of the buffer one layer at a time
        (the temporary copy is one layer's busy slots, never a second buffer), and the batch
        becomes a view of its first slots.
        """
        keep = [s for s, t in enumerate(self.tags) if t is not None]
        idx = torch.tensor(keep, device=self.device)
        c, n = self.cache, len(keep)
        lo = min(self.start[s] for s in keep)  # columns left of every busy row are padding
        for layer in c.buf:  # [2, S, kv_heads, C, head_dim]
            layer[:, :n, :, lo : c.hi] = layer[:, idx, :, lo : c.hi]
        c.buf = self.slot_storage[:, :, :n]
        for name in ["mask", "next_tok", "pos", "n_gen", "budget", "busy_t", "tok_buf"]:
            setattr(self, name, getattr(self, name)[idx])
        self.stats = self.stats[idx]
        self.tags = [self.tags[s] for s in keep]
        self.streams = [self.streams[s] for s in keep]
        self.start = [self.start[s] for s in keep]

    def _grow(self, n: int) -> list[int]:
        """Add ``n`` free slots (after a shrink, when rows wait); returns their indices.

        The batch becomes a view of more of the allocation's slots: nothing is copied. The
        new slots hold stale keys of earlier rows, which their masks hide (a free slot
        attends to its own column only, a joining row to the columns it writes).
        """
        S, c = len(self.tags), self.cache
        c.buf = self.slot_storage[:, :, : S + n]  # S + n <= slots, the allocation
        for name in ["mask", "next_tok", "pos", "n_gen", "busy_t", "tok_buf"]:
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros((n, *t.shape[1:]))]))
        self.budget = torch.cat([self.budget, self.budget.new_ones(n)])
        self.stats = self.stats.map(lambda t: torch.cat([t, t.new_zeros((n, self.max_len))]))
        self.tags += [None] * n
        self.streams += [None] * n
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
        lo = min(self.start[s] for s in busy)  # columns left of every busy row: padding for all
        if c.hi == c.buf.shape[-2]:
            self._compact_columns(lo)
            lo = min(self.start[s] for s in busy)
        c.lo = lo
        # Free slots also attend to their own column, so no row of the batch is fully masked.
        self.mask[:, c.hi] = True
        window = self.mask[:, c.lo : c.hi + 1]  # [S, W]
        result = self.model(
            input_ids=self.next_tok[:, None],
            attention_mask=decode_mask(window, self.attn_impl, self.dtype),
            position_ids=self.pos[:, None],
            use_cache=True,
            **{self.engine.cache_arg: c},
        )
        c.hi += 1
        self.steps += 1
        uniforms = None
        if self.row_streams:  # one draw per busy row from its stream; free rows draw nothing
            u = [0.0 if st is None else st.random() for st in self.streams]
            uniforms = torch.tensor(u, dtype=torch.float64, device=self.device)
        tok, picked = pick_tokens(
            result.logits[:, -1, :],
            self.temperature,
            self.top_k,
            self.greedy,
            self.generator,
            uniforms,
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
        # A slot that frees up goes back to position 0: its old position must not count in
        # the batch's largest position (Phi-3's LongRoPE switch) while it is free.
        self.pos.masked_fill_(done, 0)
        done_slots = done.nonzero().squeeze(1).tolist()  # the one host sync per step
        self.tokens_decoded += len(busy)
        if not done_slots:
            return []
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
            self.tags[s] = self.streams[s] = None
        return finished

    def kv(self, row: Finished, skip: int = 0) -> torch.Tensor:
        """The cache of a row that just ended: its prefix and every new token but the last,
        less the first ``skip`` columns, [layers, 2, kv_heads, c + n - skip, head_dim].

        A copy in the decoder's ``kv_store``; readable only until the next :meth:`step`.
        ``skip`` drops columns the caller already holds (e.g. a prompt's shared cache), so
        that a stored state need not repeat them.
        """
        if row.step != self.steps:
            raise UserError("the cache of a finished row can be read only before the next step")
        start, hi = self.start[row.slot] + skip, self.cache.hi
        if skip < 0 or start > hi:
            raise UserError(f"skip {skip} is outside the row's {hi - start + skip} cached columns")
        out = self._new_kv(hi - start)
        out.copy_(self.cache.buf[:, :, row.slot, :, start:hi])
        return out
