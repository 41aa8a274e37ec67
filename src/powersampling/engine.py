"""Batched, KV-cached decoding with per-token log-probabilities.

Every sampler in the package goes through :class:`DecodingEngine`. Given many prefixes of
different lengths it extends them all at once:

* the prefixes are left-padded into one batch (attention mask + explicit position ids, so a
  row's result does not depend on how much padding it got, up to float rounding);
* one prefill forward fills a :class:`transformers.DynamicCache`, then each decode step is
  one forward over the rows still running, one token each;
* a row leaves the batch as soon as it emits an end-of-sequence token or spends its own
  token budget: the cache, mask and positions are shrunk so finished rows cost nothing, and
  padding columns no remaining row needs are cut from the cache.

For each new token the engine records ``log p`` (the base model at temperature 1 over the full
vocabulary), ``log q`` (the distribution the token was actually drawn from: temperature and
optional top-k applied), and the entropy and top-1 probability of the base distribution.
:meth:`DecodingEngine.score` gives the same ``log p`` / ``log q`` for given continuations by
teacher forcing, which is what Metropolis-Hastings needs to evaluate a state it did not just
propose.

:class:`RollingDecoder` is continuous batching on top of the same model: rows join and
leave one running decode batch at any step, each starting from a given KV cache of its
prefix (so a prefix is never re-encoded), with the cache kept in one preallocated buffer
written in place. The power sampler runs its Markov chains through it.

Randomness: sampling draws with ``torch.multinomial(..., generator=generator)``. The generator
must live on the model's device (a CUDA generator for a model on CUDA, e.g.
``powersampling.seeding.torch_generator(seed, model.device)``). On CPU the same generator
state gives the same tokens; the draws a row gets depend on the batch it is in (its place and
the other rows), so reproducibility is per call, not per row.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from powersampling.errors import UserError


@dataclass
class Extension:
    """The result of :meth:`DecodingEngine.extend`; every list is per input row, in input order."""

    tokens: list[list[int]] = field(default_factory=list)  # new tokens, EOS included if emitted
    logp: list[torch.Tensor] = field(default_factory=list)  # float64 [n_i], base model, T=1
    logq: list[torch.Tensor] = field(default_factory=list)  # float64 [n_i], sampled distribution
    entropy: list[torch.Tensor] = field(default_factory=list)  # float64 [n_i], nats, base T=1
    top1: list[torch.Tensor] = field(default_factory=list)  # float64 [n_i], base T=1
    finish_reason: list[str] = field(default_factory=list)  # "eos" | "length"
    n_prefilled: int = 0  # real (non-pad) prefix tokens run through prefill
    n_decoded: int = 0  # new tokens produced in total


def log_q(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Log-probabilities of the sampling distribution: softmax(logits / T) on the top-k logits.

    Ties with the k-th largest logit are all kept (so the support is deterministic and the same
    in :meth:`DecodingEngine.extend` and :meth:`DecodingEngine.score`); tokens outside the
    support get ``-inf``. Computed in float32 whatever the model's dtype.
    """
    z = logits.float() / temperature  # [..., V]
    if top_k is not None and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]  # [..., 1]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def _budgets(max_new_tokens: int | list[int], n: int) -> list[int]:
    """One integer budget >= 0 per row."""
    many = not isinstance(max_new_tokens, int) and hasattr(max_new_tokens, "__len__")
    values = list(max_new_tokens) if many else [max_new_tokens] * n
    if len(values) != n:
        raise UserError(f"max_new_tokens has {len(values)} entries for {n} prefixes")
    try:
        budgets = [operator.index(b) for b in values]
    except TypeError:
        budgets = [-1]
    if any(b < 0 for b in budgets):
        raise UserError(f"max_new_tokens must be integers >= 0 (got {max_new_tokens!r})")
    return budgets


def _check_sampling(temperature: float, top_k: int | None, greedy: bool = False) -> None:
    if greedy:
        return
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise UserError(
            f"temperature must be a number > 0 (got {temperature!r}); use greedy decoding for T=0"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be a positive integer or null (got {top_k!r})")


class DecodingEngine:
    """Extends and scores many token sequences at once with one Hugging Face causal LM.

    Args:
        model: a ``transformers`` causal LM (e.g. ``Qwen2ForCausalLM``); put in eval mode here.
        eos_token_ids: tokens that end a sequence (the EOS token is kept in the output).
        pad_token_id: any valid token id; padded positions are masked out, so its value only
            has to be embeddable.
        max_batch_size: at most this many rows per forward pass; larger requests are split
            into chunks of rows with similar prefix lengths (None: no limit).
        score_logits_budget: :meth:`score` keeps at most about this many logits (rows x
            positions x vocabulary) in memory per forward pass, and splits rows accordingly.
    """

    def __init__(
        self,
        model,
        eos_token_ids: list[int],
        pad_token_id: int,
        max_batch_size: int | None = None,
        score_logits_budget: int = 2**28,
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise UserError(f"max_batch_size must be >= 1 or None (got {max_batch_size})")
        if pad_token_id is None:
            raise UserError("pad_token_id must be a token id (the tokenizer has no pad token?)")
        self.model = model.eval()  # dropout off: the log-probs must be the model's
        self.eos_token_ids = sorted({int(t) for t in eos_token_ids})
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.score_logits_budget = score_logits_budget
        self.vocab_size = model.config.get_text_config().vocab_size
        # None when the config has no such field: then no up-front length check.
        self.max_positions = getattr(
            model.config.get_text_config(), "max_position_embeddings", None
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ checks

    def _check_rows(self, prefixes: list[list[int]], extra: list[int], what: str) -> None:
        """Each prefix is a non-empty list of valid ids and fits the context with ``extra`` more."""
        for i, (prefix, n) in enumerate(zip(prefixes, extra, strict=True)):
            if len(prefix) == 0:
                raise UserError(f"row {i}: the prefix is empty; it needs at least one token")
            lo, hi = min(prefix), max(prefix)
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise UserError(
                    f"row {i}: token id {bad} is outside the vocabulary of {self.vocab_size}"
                )
            if self.max_positions is not None and len(prefix) + n > self.max_positions:
                raise UserError(
                    f"row {i}: prefix of {len(prefix)} tokens + {n} {what} = {len(prefix) + n} "
                    f"tokens exceeds the model's context of {self.max_positions} tokens"
                )

    def _chunks(self, rows: list[int], lengths: list[int]) -> list[list[int]]:
        """Split ``rows`` into batches of at most ``max_batch_size``, grouping similar lengths."""
        if self.max_batch_size is None or len(rows) <= self.max_batch_size:
            return [rows] if rows else []
        # Sorting by length before cutting keeps padding (wasted compute) small in each chunk.
        rows = sorted(rows, key=lambda r: lengths[r])
        size = self.max_batch_size
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def _prefill(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """One forward over left-padded prefixes: last-position logits [B, V] and the cache."""
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # pads get 0; real tokens 0..len-1
        cache = DynamicCache(config=self.model.config)
        result = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return result.logits[:, -1, :], result.past_key_values

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, both [B, L] on the model's device."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ extend

    @torch.no_grad()
    def extend(
        self,
        prefixes: list[list[int]],
        max_new_tokens: int | list[int],
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Extension:
        """Extend every prefix until an EOS token or its own budget of new tokens.

        Args:
            prefixes: token ids per row (lengths may differ; none may be empty).
            max_new_tokens: one budget for all rows, or one per row; a row with budget 0 gets
                an empty extension with finish reason "length".
            temperature, top_k: the sampling distribution q = softmax(logits / T) on the top-k
                logits (ignored when ``greedy``).
            greedy: take the most likely token (ties: the lowest id); ``logq`` is then 0.
            generator: the random stream, on the model's device (None: torch's global one).

        Returns:
            An :class:`Extension`; its tensors are on the CPU.
        """
        n = len(prefixes)
        budgets = _budgets(max_new_tokens, n)
        _check_sampling(temperature, top_k, greedy)
        if generator is not None and generator.device.type != self.device.type:
            raise UserError(
                f"the generator is on {generator.device} but the model is on {self.device}; "
                "create it on the model's device"
            )
        self._check_rows(prefixes, budgets, "new tokens")

        empty = torch.zeros(0, dtype=torch.float64)
        out = Extension(
            tokens=[[] for _ in range(n)],
            logp=[empty] * n,
            logq=[empty] * n,
            entropy=[empty] * n,
            top1=[empty] * n,
            finish_reason=["length"] * n,
        )
        rows = [i for i in range(n) if budgets[i] > 0]
        for chunk in self._chunks(rows, [len(p) for p in prefixes]):
            self._extend_chunk(chunk, prefixes, budgets, out, temperature, top_k, greedy, generator)
        return out

    def _extend_chunk(self, rows, prefixes, budgets, out, temperature, top_k, greedy, generator):
        """Extend ``rows`` (indices into ``prefixes``) in one batch; fill their slots of ``out``."""
        device = self.device
        B = len(rows)
        budget = torch.tensor([budgets[r] for r in rows], device=device)  # [B]
        width = int(budget.max())
        # Per-row results are written into fixed buffers (no host sync per row per step).
        tok_buf = torch.zeros((B, width), dtype=torch.long, device=device)
        stats = torch.zeros((4, B, width), dtype=torch.float64, device=device)  # logp,logq,H,top1
        n_gen = torch.zeros(B, dtype=torch.long, device=device)
        hit_eos = torch.zeros(B, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)

        ids, attn = self._left_pad([prefixes[r] for r in rows])  # [B, L]
        logits, cache = self._prefill(ids, attn)  # [B, V]
        next_pos = attn.sum(-1)  # [B] position of the token about to be fed
        active = torch.arange(B, device=device)  # chunk-row index of each batch row
        out.n_prefilled += sum(len(prefixes[r]) for r in rows)

        while True:
            tok, lp, lq, ent, top1 = self._pick(logits, temperature, top_k, greedy, generator)
            step = n_gen[active]
            tok_buf[active, step] = tok
            stats[:, active, step] = torch.stack([lp, lq, ent, top1]).double()
            n_gen[active] += 1
            is_eos = torch.isin(tok, eos)
            hit_eos[active] = is_eos
            keep = ~(is_eos | (n_gen[active] >= budget[active]))  # [b]
            n_keep = int(keep.sum())  # the one host sync per step
            if n_keep == 0:
                break
            if n_keep < len(active):
                idx = keep.nonzero().squeeze(1)
                cache.batch_select_indices(idx)
                active, tok, attn, next_pos = active[idx], tok[idx], attn[idx], next_pos[idx]
                attn = self._trim_left_padding(cache, attn)
            attn = torch.cat([attn, attn.new_ones((len(active), 1))], dim=1)
            result = self.model(
                input_ids=tok[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache = result.past_key_values
            logits = result.logits[:, -1, :]
            next_pos = next_pos + 1

        tok_buf, stats = tok_buf.cpu(), stats.cpu()
        n_gen, hit_eos = n_gen.tolist(), hit_eos.tolist()
        for j, r in enumerate(rows):
            k = n_gen[j]
            out.tokens[r] = tok_buf[j, :k].tolist()
            out.logp[r], out.logq[r], out.entropy[r], out.top1[r] = (
                s.clone() for s in stats[:, j, :k]
            )
            out.finish_reason[r] = "eos" if hit_eos[j] else "length"
            out.n_decoded += k

    def _pick(self, logits, temperature, top_k, greedy, generator):
        """Choose one token per row from logits [b, V]; return it with its per-token stats."""
        logp_all = torch.log_softmax(logits.float(), dim=-1)  # [b, V] base model, T=1
        p = logp_all.exp()
        entropy = -torch.where(p > 0, p * logp_all, 0.0).sum(-1)  # 0·log 0 = 0
        top1 = p.max(-1).values
        if greedy:
            tok = logits.argmax(-1)  # first maximum, i.e. the lowest id among ties
            logq = torch.zeros_like(top1)
        else:
            same = temperature == 1 and (top_k is None or top_k >= logits.shape[-1])
            logq_all = logp_all if same else log_q(logits, temperature, top_k)
            tok = torch.multinomial(logq_all.exp(), 1, generator=generator).squeeze(1)
            logq = logq_all.gather(1, tok[:, None]).squeeze(1)
        logp = logp_all.gather(1, tok[:, None]).squeeze(1)
        return tok, logp, logq, entropy, top1

    @staticmethod
    def _trim_left_padding(cache, attn: torch.Tensor) -> torch.Tensor:
        """Drop leading cache columns that are padding for every remaining row.

        After long rows leave, the short ones still carry the long rows' left padding; the
        attention over it is masked but still costs memory bandwidth at each step. Only plain
        full-attention layers are trimmed (sliding-window or other layers keep their layout).
        """
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            return attn
        n_pad = int((attn.any(0).cumsum(0) == 0).sum())  # leading all-pad columns
        if n_pad == 0:
            return attn
        for layer in cache.layers:
            if layer.is_initialized and layer.keys.numel() > 0:
                layer.keys = layer.keys[:, :, n_pad:, :]
                layer.values = layer.values[:, :, n_pad:, :]
        return attn[:, n_pad:]

    # ------------------------------------------------------------------ score

    @torch.no_grad()
    def score(
        self,
        prefixes: list[list[int]],
        continuations: list[list[int]],
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher-forced per-token ``(log p, log q)`` of each continuation given its prefix.

        ``log p`` is the base model at T=1 over the full vocabulary; ``log q`` is
        :func:`log_q` with ``temperature`` and ``top_k`` (``-inf`` for a token outside the
        top-k). Both are float64 CPU tensors of length ``len(continuation)``, per row.
        """
        n = len(prefixes)
        if len(continuations) != n:
            raise UserError(f"{len(continuations)} continuations for {n} prefixes")
        _check_sampling(temperature, top_k)
        self._check_rows(prefixes, [len(c) for c in continuations], "continuation tokens")
        for i, c in enumerate(continuations):
            if c and (min(c) < 0 or max(c) >= self.vocab_size):
                raise UserError(f"row {i}: a continuation token is outside the vocabulary")

        empty = torch.zeros(0, dtype=torch.float64)
        logp, logq = [empty] * n, [empty] * n
        rows = [i for i in range(n) if continuations[i]]
        totals = [len(p) + len(c) for p, c in zip(prefixes, continuations, strict=True)]
        for chunk in self._chunks(rows, totals):
            # Split further so the kept logits (rows x positions x vocab) stay within budget.
            keep = max(len(continuations[r]) for r in chunk)
            per_pass = max(1, self.score_logits_budget // (keep * self.vocab_size))
            for start in range(0, len(chunk), per_pass):
                sub = chunk[start : start + per_pass]
                self._score_chunk(sub, prefixes, continuations, temperature, top_k, logp, logq)
        return logp, logq

    def _score_chunk(self, rows, prefixes, continuations, temperature, top_k, logp, logq):
        # Feed prefix + continuation[:-1]: position t predicts token t+1, so with left padding
        # the m_i predictions of row i's continuation are the last m_i positions of the batch.
        seqs = [prefixes[r] + continuations[r][:-1] for r in rows]
        ids, attn = self._left_pad(seqs)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(continuations[r]) for r in rows)
        logits = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep
        ).logits  # [b, keep, V]
        same = temperature == 1 and (top_k is None or top_k >= logits.shape[-1])
        for j, r in enumerate(rows):
            m = len(continuations[r])
            row_logits = logits[j, keep - m :]  # [m, V]
            target = torch.tensor(continuations[r], device=self.device)[:, None]  # [m, 1]
            lp_all = torch.log_softmax(row_logits.float(), dim=-1)
            lq_all = lp_all if same else log_q(row_logits, temperature, top_k)
            logp[r] = lp_all.gather(1, target).squeeze(1).double().cpu()
            logq[r] = lq_all.gather(1, target).squeeze(1).double().cpu()


# ---------------------------------------------------------------------- continuous batching


@dataclass
class Finished:
    """A row of a :class:`RollingDecoder` that ended at the last step (EOS or its budget)."""

    tag: object  # what the caller passed to :meth:`RollingDecoder.add`
    slot: int  # its batch row (its cache: :meth:`RollingDecoder.kv`, until the next step)
    tokens: list[int]  # new tokens, EOS included if emitted
    stats: torch.Tensor  # float64 [4, n] on the CPU: log p, log q, entropy, top-1 (as in Extension)
    finish_reason: str  # "eos" | "length"
    step: int  # the decoder's step count when it ended


class _BufferCache:
    """The KV cache of a :class:`RollingDecoder`: one preallocated buffer, written in place.

    ``buf`` is [layers, 2 (key, value), slots, kv_heads, columns, head_dim]. A decode step
    writes every row's new key/value at column ``hi`` and attends over columns ``lo..hi``.
    Writing in place avoids the copy of the whole cache that ``DynamicCache`` makes at every
    step (``torch.cat``), which dominates the cost of a step for small models.
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
        _check_sampling(temperature, top_k, greedy)
        if slots < 1 or max_len < 2:
            raise UserError(
                f"a rolling batch needs slots >= 1 and max_len >= 2 (got {slots}, {max_len})"
            )
        if generator is not None and generator.device.type != engine.device.type:
            raise UserError(
                f"the generator is on {generator.device} but the model is on {engine.device}; "
                "create it on the model's device"
            )
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
        d, C = self.device, 2 * self.max_len
        shape = (self.n_layers, 2, slots, self.kv_heads, C, self.head_dim)
        self.cache = _BufferCache(torch.zeros(shape, dtype=self.dtype, device=d))
        self.cache.lo = self.cache.hi = self.max_len  # room on the left for any joining row
        self.mask = torch.zeros((slots, C), dtype=torch.bool, device=d)  # [S, C] attendable
        self.next_tok = torch.zeros(slots, dtype=torch.long, device=d)  # fed at the next step
        self.pos = torch.zeros(slots, dtype=torch.long, device=d)  # its position id
        self.n_gen = torch.zeros(slots, dtype=torch.long, device=d)
        self.budget = torch.ones(slots, dtype=torch.long, device=d)
        self.busy_t = torch.zeros(slots, dtype=torch.bool, device=d)
        self.tok_buf = torch.zeros((slots, self.max_len), dtype=torch.long, device=d)
        self.stats = torch.zeros((4, slots, self.max_len), dtype=torch.float64, device=d)
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
        self.engine._check_rows([prefixes[r] for r in rows], [0] * len(rows), "tokens")
        for chunk in self.engine._chunks(rows, [len(p) for p in prefixes]):
            ids, attn = self.engine._left_pad([prefixes[r] for r in chunk])  # [b, L]
            _, cache = self.engine._prefill(ids, attn)
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
        self.stats = self.stats[:, idx]
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
        self.stats = torch.cat([self.stats, self.stats.new_zeros((4, n, self.max_len))], dim=1)
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
        tok, lp, lq, ent, top1 = self.engine._pick(
            result.logits[:, -1, :], self.temperature, self.top_k, self.greedy, self.generator
        )
        S = len(self.tags)
        rows = torch.arange(S, device=self.device)
        col = self.n_gen.clamp(max=self.max_len - 1)
        self.tok_buf[rows, col] = tok
        self.stats[:, rows, col] = torch.stack([lp, lq, ent, top1]).double()
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
        stats = self.stats[:, done_slots].cpu()
        self.busy_t[done_slots] = False
        finished = []
        for j, (s, n, e) in enumerate(zip(done_slots, n_gen, eos_flags, strict=True)):
            finished.append(
                Finished(
                    tag=self.tags[s],
                    slot=s,
                    tokens=toks[j, :n].tolist(),
                    stats=stats[:, j, :n].clone(),
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
