"""Static batches: extend and score many prefixes at once with one KV-cached model.

Given many prefixes of different lengths, :meth:`DecodingEngine.extend` extends them all at
once:

* the prefixes are left-padded into one batch (attention mask + explicit position ids, so a
  row's result does not depend on how much padding it got, up to float rounding);
* one prefill forward fills a :class:`transformers.DynamicCache`, which is copied into one
  preallocated buffer of prompt + budget columns
  (:class:`~powersampling.engine.static_rows.BufferRows`); each decode step is one forward
  over the rows still running, one token each, written in place, so a step does not copy
  the cache (models the buffer cannot serve keep the ``DynamicCache``:
  :class:`~powersampling.engine.static_rows.GrowingRows`);
* a row leaves the batch as soon as it emits an end-of-sequence token or spends its own
  token budget: the running rows move to the front, so finished rows cost nothing, and
  padding columns no remaining row needs leave the attention window.

Each new token comes with its :class:`~powersampling.engine.tokens.TokenStats` (log p, log q,
entropy, top-1). :meth:`DecodingEngine.score` gives the same ``log p`` / ``log q`` for given
continuations by teacher forcing, which is what Metropolis-Hastings needs to evaluate a
state it did not just propose.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from powersampling.engine.kv_buffer import buffer_refusal
from powersampling.engine.static_rows import BufferRows, GrowingRows
from powersampling.engine.tokens import (
    TokenStats,
    check_generator,
    check_sampling,
    is_base_distribution,
    log_q,
    pick_tokens,
    row_budgets,
)
from powersampling.errors import UserError


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes the KV cache.

    transformers 5.24 renamed the argument ``past_key_values`` to ``cache`` (the old name
    still works there, with a deprecation warning, and will go); 5.4 to 5.23 know only
    ``past_key_values``. The model's own signature says which one it has, whatever the
    installed version, so both engines ask it once per model.
    """
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise UserError(
        f"{type(model).__name__}.forward takes neither 'cache' nor 'past_key_values': "
        "the engines need a causal LM that accepts a KV cache"
    )


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
        self.cache_arg = cache_argument(model)  # "cache" or "past_key_values"
        self.vocab_size = model.config.get_text_config().vocab_size
        # None when the config has no such field: then no up-front length check.
        self.max_positions = getattr(
            model.config.get_text_config(), "max_position_embeddings", None
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ building blocks

    def check_rows(self, prefixes: list[list[int]], extra: list[int], what: str) -> None:
        """Each prefix is a non-empty list of valid ids and fits the context with ``extra`` more.

        ``what`` names the extra tokens in the error message (e.g. "new tokens").
        """
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

    def chunks(self, rows: list[int], lengths: list[int]) -> list[list[int]]:
        """Split ``rows`` into batches of at most ``max_batch_size``, grouping similar lengths.

        ``lengths[r]`` is the length of row ``r`` (indexed by the values in ``rows``).
        """
        if self.max_batch_size is None or len(rows) <= self.max_batch_size:
            return [rows] if rows else []
        # Sorting by length before cutting keeps padding (wasted compute) small in each chunk.
        rows = sorted(rows, key=lambda r: lengths[r])
        size = self.max_batch_size
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def prefill(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """One forward over left-padded prefixes: last-position logits [B, V] and the cache.

        ``ids`` and ``attn`` [B, L] as from :meth:`left_pad`; pads get position 0 and are
        masked, so each row's cache columns are those of its own prefix, right-aligned.
        """
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # pads get 0; real tokens 0..len-1
        cache = DynamicCache(config=self.model.config)
        result = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: cache},
        )
        # The model fills ``cache`` in place; the output's copy of it is not read (its name,
        # too, changed in 5.24).
        return result.logits[:, -1, :], cache

    def left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, both [B, L] on the model's device.

        Left padding puts every row's last token in the last column, where decoding continues.
        """
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
        budgets = row_budgets(max_new_tokens, n)
        check_sampling(temperature, top_k, greedy)
        check_generator(generator, self.device)
        self.check_rows(prefixes, budgets, "new tokens")

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
        for chunk in self.chunks(rows, [len(p) for p in prefixes]):
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
        stats = TokenStats.zeros(B, width, device=device)  # [B, width] each
        n_gen = torch.zeros(B, dtype=torch.long, device=device)
        hit_eos = torch.zeros(B, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)

        ids, attn = self.left_pad([prefixes[r] for r in rows])  # [B, L]
        batch = self._running_rows(ids, attn, width)
        logits = batch.logits  # [B, V]
        active = torch.arange(B, device=device)  # chunk-row index of each batch row
        out.n_prefilled += sum(len(prefixes[r]) for r in rows)

        while True:
            tok, picked = pick_tokens(logits, temperature, top_k, greedy, generator)  # [b]
            step = n_gen[active]
            tok_buf[active, step] = tok
            stats[active, step] = picked
            n_gen[active] += 1
            is_eos = torch.isin(tok, eos)
            hit_eos[active] = is_eos
            keep = ~(is_eos | (n_gen[active] >= budget[active]))  # [b]
            n_keep = int(keep.sum())  # the one host sync per step
            if n_keep == 0:
                break
            if n_keep < len(active):
                idx = keep.nonzero().squeeze(1)  # increasing
                batch.keep(idx)
                active, tok = active[idx], tok[idx]
            logits = batch.step(tok)

        tok_buf, stats = tok_buf.cpu(), stats.cpu()
        n_gen, hit_eos = n_gen.tolist(), hit_eos.tolist()
        for j, r in enumerate(rows):
            k = n_gen[j]
            out.tokens[r] = tok_buf[j, :k].tolist()
            row = stats[j, :k].clone()
            out.logp[r], out.logq[r], out.entropy[r], out.top1[r] = row.tensors()
            out.finish_reason[r] = "eos" if hit_eos[j] else "length"
            out.n_decoded += k

    def _running_rows(self, ids, attn, max_new_tokens: int) -> BufferRows | GrowingRows:
        """Prefill ``ids`` [B, P] and hold the rows' cache for decoding: in a preallocated
        buffer when the model allows (:func:`buffer_refusal`), else in the ``DynamicCache``."""
        logits, cache = self.prefill(ids, attn)
        cfg = self.model.config.get_text_config()
        B, P = ids.shape
        if buffer_refusal(cfg, P + max_new_tokens) is None and BufferRows.fits(cache, cfg, B, P):
            impl = cfg._attn_implementation
            return BufferRows(self, logits, cache, attn, impl, max_new_tokens)
        return GrowingRows(self, logits, cache, attn)

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
        check_sampling(temperature, top_k)
        self.check_rows(prefixes, [len(c) for c in continuations], "continuation tokens")
        for i, c in enumerate(continuations):
            if c and (min(c) < 0 or max(c) >= self.vocab_size):
                raise UserError(f"row {i}: a continuation token is outside the vocabulary")

        empty = torch.zeros(0, dtype=torch.float64)
        logp, logq = [empty] * n, [empty] * n
        rows = [i for i in range(n) if continuations[i]]
        totals = [len(p) + len(c) for p, c in zip(prefixes, continuations, strict=True)]
        for chunk in self.chunks(rows, totals):
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
        ids, attn = self.left_pad(seqs)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(continuations[r]) for r in rows)
        logits = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep
        ).logits  # [b, keep, V]
        same = is_base_distribution(temperature, top_k, logits.shape[-1])
        for j, r in enumerate(rows):
            m = len(continuations[r])
            row_logits = logits[j, keep - m :]  # [m, V]
            target = torch.tensor(continuations[r], device=self.device)[:, None]  # [m, 1]
            lp_all = torch.log_softmax(row_logits.float(), dim=-1)
            lq_all = lp_all if same else log_q(row_logits, temperature, top_k)
            logp[r] = lp_all.gather(1, target).squeeze(1).double().cpu()
            logq[r] = lq_all.gather(1, target).squeeze(1).double().cpu()
