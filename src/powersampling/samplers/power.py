"""Power sampling: answers from π_α(x) ∝ p(x)^α by batched, exact Metropolis–Hastings.

The procedure of Karan & Du (2025), made exact. The answer grows in blocks of B tokens
up to ``max_new_tokens``; block k has the length cap c_k = min(k·B, max_new_tokens).
After each extension, ``mcmc_steps`` Metropolis–Hastings steps target π_α restricted to
the cap: the answers ending with EOS of at most c_k tokens plus the answers of exactly
c_k tokens without EOS (for those, p is the probability of the prefix). One step:

1. cut index i uniform in 0..L-1 (L = length of the current answer x);
2. regenerate the suffix from i with the proposal q (token-level temperature
   ``proposal_temperature``, default 1/α, optional top-k) until EOS or the cap: x′, L′;
3. accept with probability

       min(1, p(x′)^α q(x_{≥i} | x_{<i}) (1/L′) / [p(x)^α q(x′_{≥i} | x_{<i}) (1/L)]).

The ratio uses the *whole* suffixes of both states. q of the current suffix is the
per-token log q stored when those tokens were generated: q(token | prefix) depends only
on the prefix (also with top-k), so stored values are exact. The cut index is part of
the move and the reverse move picks the same index from x′ (probability 1/L′, and
i < L′ because a proposal has at least one new token), which gives detailed balance.
The published code compares only the overlapping part of the two suffixes and caps
proposals at the current length; once EOS can appear that breaks detailed balance.

A chain stops after the block in which its state ends with EOS (or after the block that
reaches ``max_new_tokens``). Each block's MH steps are exact for that block's target, but
the stopping rule itself biases the output towards short answers: chains that would have
moved from a short answer to a longer one in a later block are no longer there, and the
chains still running start the next block conditioned on *not* having ended. So the
output is π_α at the final cap only for the chains still running in the last block (after
enough steps there); this bias exists even at α = 1. With ``stop_at_eos: false`` finished
chains stay in the batch (no extension, MH steps only) until the last block, whose steps
then target π_α at ``max_new_tokens`` for every chain, at the price of running every chain
through every block. :func:`powersampling.toy.enumerate.sampler_distribution` gives the
exact output distribution of either procedure, and the tests compare against it.

Batching (continuous): the chains of all prompts share one running decode batch
(:class:`~powersampling.engine.RollingDecoder`), but each chain moves on its own: as soon
as a proposal ends (EOS or the cap), that chain's accept/reject is done and its next
proposal (next MH step, or the next block's extension) joins the batch at the next decode
step. So no chain waits for the longest suffix of the others, and every decode step runs a
full batch while work is left. Each chain's transitions are unchanged (same proposal law,
same acceptance test); only their interleaving across chains differs.

Randomness: every chain has its own stream (a ``numpy.random.Generator`` from the chain's
seed) for all its random choices: its tokens (one uniform per token, drawn by the decoder
through the inverse CDF of q), cut indices and accept draws. So a chain's answer is a
function of its prompt, budget and seed alone (up to float rounding of the batched forward
passes): not of the other chains, their number, their order or ``max_batch_size``. A
generation job seeds each chain from its problem and run seed; dynamic power sampling relies
on this to run, for real, exactly the trajectories it replays from a pool.

KV reuse: each distinct prompt is encoded once (all but its last token), and that cache
is one tensor shared by the chains of the prompt. A chain keeps the KV cache of its own
answer only: the columns of the prompt's last token and of every answer token but the
last (L columns for an answer of L tokens). A proposal cut at i is queued as two pieces,
the prompt's cache and the first i columns of the answer's, which the decoder writes one
after the other into a batch row (no concatenated copy), and feeds the one token before
the cut; so a proposal costs one decode step per new token and re-encodes one token,
whatever the prefix length. On acceptance the proposal's answer cache (read from the
decoder without the prompt's columns) becomes the chain's. ``tokens_prefilled`` counts
what was encoded without being sampled: the prompt (less its last token, for the first
chain of each distinct prompt) plus one token per proposal (block extensions included).
Keys and values of the kept prefix were computed when its tokens were generated, in
another batch layout; they equal a fresh prefill up to float rounding.

Memory, with kv = layers × 2 × kv_heads × head_dim × dtype bytes per token: the decoder's
buffer (rows × :func:`~powersampling.engine.rolling.buffer_columns` of the longest prompt
+ budget); one prompt cache of (P - 1) × kv per distinct prompt; and per chain the cache
of its current answer, at most ``budget`` × kv, plus, for a moment when a proposal is
accepted, the proposal's. :attr:`PowerSampler.kv_store` puts the prompt and chain caches on
the device (``"device"``) or in host memory (``"host"``, pinned when the device is CUDA;
copied to the device when a proposal joins the batch).

Per-row budgets: :meth:`PowerSampler.sample` takes an optional budget per prompt (at most
``max_new_tokens``); a chain's block caps are then ``block_caps(block_size, budget)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from powersampling.samplers.base import (
    ALPHA,
    LONG_ANSWERS,
    PROPOSAL_TEMPERATURE,
    PROPOSAL_TOP_K,
    Param,
    PerProblemStreams,
    Sampler,
    completion_record,
    power_target,
    row_seeds,
    token_budgets,
)

if TYPE_CHECKING:  # annotations only; see sample() for the runtime import
    from powersampling.engine import Finished, RollingDecoder, TokenStats


def block_caps(block_size: int, max_new_tokens: int) -> list[int]:
    """Length caps of the successive blocks: min(k·B, max_new_tokens) for k = 1, 2, ..."""
    n_blocks = -(-max_new_tokens // block_size)
    return [min(k * block_size, max_new_tokens) for k in range(1, n_blocks + 1)]


@dataclass
class _Chain:
    """One Markov chain: its current answer with per-token statistics, and its counters."""

    prompt: list[int]
    caps: list[int]  # length caps of the chain's blocks (from its token budget)
    tokens: list[int] = field(default_factory=list)
    # Per-token float64 numpy arrays [L] (cheaper to splice than tiny torch tensors).
    logp: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # base model at T=1, full vocabulary
    logq: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the proposal distribution
    entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eos: bool = False  # the current answer ends with an EOS token
    # Every random choice of the chain: its tokens, cut indices and accept draws.
    stream: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    # KV cache of the prompt without its last token, shared with the prompt's other chains:
    # [layers, 2, kv_heads, P - 1, head_dim]
    prompt_kv: torch.Tensor | None = None
    # KV cache of the prompt's last token and of the answer without its last token (this
    # chain's own): [layers, 2, kv_heads, L, head_dim]
    answer_kv: torch.Tensor | None = None
    block: int = 0  # index of the current block
    extended: bool = False  # the current block's extension is done (or not needed)
    steps: int = 0  # MH steps done in the current block
    accepted_at_block_start: int = 0
    cut: int = 0  # cut index of the proposal in flight
    in_extension: bool = False  # the proposal in flight is the block's extension
    proposals: int = 0
    accepted: int = 0
    decoded: int = 0
    prefilled: int = 0
    trace: list[dict] = field(default_factory=list)
    lifetime_s: float = math.nan

    def replace_suffix(self, cut: int, tokens: list[int], stats: TokenStats, eos: bool) -> None:
        """Keep tokens [0, cut) and append ``tokens`` with their stats (float64 CPU, [n] each)."""
        self.tokens = self.tokens[:cut] + tokens
        self.logp = np.concatenate([self.logp[:cut], stats.logp.numpy()])
        self.logq = np.concatenate([self.logq[:cut], stats.logq.numpy()])
        self.entropy = np.concatenate([self.entropy[:cut], stats.entropy.numpy()])
        self.top1 = np.concatenate([self.top1[:cut], stats.top1.numpy()])
        self.eos = eos


def log_acceptance(
    alpha: float,
    cur_logp,
    cur_logq,
    prop_logp,
    prop_logq,
    cur_len: int,
    prop_len: int,
) -> float:
    """log of p(x′)^α q(x_{≥i}) (1/L′) / [p(x)^α q(x′_{≥i}) (1/L)] from the two whole suffixes.

    ``cur_*`` are the per-token values of the current suffix x_{≥i}, ``prop_*`` those of
    the proposed suffix x′_{≥i}; the shared prefix cancels.
    """
    return (
        alpha * (float(prop_logp.sum()) - float(cur_logp.sum()))
        + float(cur_logq.sum())
        - float(prop_logq.sum())
        + math.log(cur_len)
        - math.log(prop_len)
    )


class PowerSampler(PerProblemStreams, Sampler):
    """Exact block-wise Metropolis–Hastings power sampling, batched over prompts.

    For several chains per prompt, repeat the prompt. Its ``sampler_trace`` has one record
    per block (:data:`TRACE_FIELDS`).

    ``kv_store`` (an attribute, not a method parameter: it changes where caches live, not
    the output) is ``"device"`` (default) or ``"host"``: where the prompt caches and the
    chains' answer caches are kept between proposals (see the module docstring). A job sets
    it from its memory plan before calling :meth:`sample`.
    """

    name = "power"
    DECODER = "rolling"
    PARAMS = {
        "alpha": ALPHA,
        "block_size": Param(
            {"type": "integer", "minimum": 1},
            "Power sampling grows the answer in blocks of this many tokens.",
            default=192,
        ),
        "max_new_tokens": LONG_ANSWERS,
        "mcmc_steps": Param(
            {"type": "integer", "minimum": 0},
            "Metropolis-Hastings steps after each block (0: plain block-wise proposals).",
            default=10,
        ),
        "proposal_temperature": PROPOSAL_TEMPERATURE,
        "proposal_top_k": PROPOSAL_TOP_K,
        "greedy_accept": Param(
            {"type": "boolean"},
            "The alpha-to-infinity variant: accept iff the target increases.",
            default=False,
        ),
        "stop_at_eos": Param(
            {"type": "boolean"},
            "Stop a chain after the block in which it ends with EOS (the published "
            "procedure; this favours short answers). false keeps every chain to the last "
            "block, which makes the output exactly pi_alpha at max_new_tokens.",
            default=True,
        ),
    }
    TRACE_FIELDS = {
        "block": "index of the block (0-based)",
        "length": "answer length in tokens at the end of the block",
        "proposals": "MH proposals made in the block",
        "accepted": "MH proposals accepted in the block",
        "logp": "log p of the chain's answer at the end of the block (base model, T=1)",
    }

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        self.alpha, self.temperature = power_target(self.params)

    @classmethod
    def expected_tokens(
        cls, params: dict[str, Any], answer_tokens: float, settings: dict | None = None
    ) -> float:
        """Tokens a chain decodes when its answer is A = ``answer_tokens`` long (at most the
        last cap), counted as :meth:`sample` counts ``tokens_decoded``.

        The chain runs the blocks of ``block_caps(block_size, max_new_tokens)`` up to the
        first cap c_k >= A (the block in which it ends with EOS; with ``stop_at_eos: false``,
        every block), its answer L_k = min(A, c_k) long after block k. Extensions decode the
        answer's A tokens once in all. A proposal cuts at i uniform in 0..L-1 and regenerates
        the suffix until EOS or the cap; taking the proposed answer as long as the current
        one, it decodes L - i tokens, (L + 1) / 2 on average. So

            tokens = A + mcmc_steps · Σ_k (L_k + 1) / 2.

        Exact in expectation when every answer runs to the cap (no EOS); with EOS, proposals
        are as long as the answers they draw, so the formula is exact only where those match
        A on average (:func:`powersampling.toy.enumerate.expected_tokens_decoded` gives the
        exact cost over an enumerated support).
        """
        caps = block_caps(params["block_size"], params["max_new_tokens"])
        length = min(float(answer_tokens), caps[-1])
        if params["stop_at_eos"]:
            caps = caps[: next(k for k, cap in enumerate(caps) if cap >= length) + 1]
        per_step = sum((min(length, cap) + 1) / 2 for cap in caps)
        return length + params["mcmc_steps"] * per_step

    # ------------------------------------------------------------------ main loop

    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator | None,
        budgets: list[int] | None = None,
        chain_seeds: list[int] | None = None,
    ) -> list[dict]:
        """One power-sampled completion per prompt (repeat a prompt for several chains).

        ``budgets``: the most new tokens of each chain (1..``max_new_tokens``; None: all
        ``max_new_tokens``); a chain's blocks are capped at ``block_caps(block_size, budget)``.
        ``chain_seeds``: each chain's seed (one integer >= 0 per prompt); None draws them from
        ``generator``. A chain's answer depends on its seed, not on the other chains.
        ``chain_lifetime_s`` of a row is the time from the start of the call until its chain
        finished (chains run together, so it is an elapsed time, not a private cost).
        """
        t0 = time.perf_counter()
        p = self.params
        budgets = token_budgets(budgets, len(prompts), p["max_new_tokens"])
        chain_seeds = row_seeds(chain_seeds, generator, len(prompts))
        chains = [
            _Chain(
                prompt=list(q),
                caps=block_caps(p["block_size"], b),
                stream=np.random.default_rng(int(seed)),
            )
            for q, b, seed in zip(prompts, budgets, chain_seeds, strict=True)
        ]
        if not chains:
            return []
        engine = self.engine
        # The longest row: a prompt with its chain's budget (the last cap).
        longest = max(len(c.prompt) + c.caps[-1] for c in chains)
        engine.check_rows([c.prompt for c in chains], [c.caps[-1] for c in chains], "new tokens")
        n = len(chains)
        # Imported here, not at the top: config validation reads PARAMS from this module
        # at every workflow start, and the engine pulls in transformers (seconds).
        from powersampling.engine import RollingDecoder

        decoder = RollingDecoder(
            engine,
            slots=min(n, engine.max_batch_size or n),
            max_len=longest,
            temperature=self.temperature,
            top_k=self.params["proposal_top_k"],
            row_streams=True,
            kv_store=self.kv_store,
        )
        # Each distinct prompt is encoded once (all but its last token, which every first
        # extension feeds); chains of the same prompt share that cache (one tensor). The
        # prefill is counted in the tokens_prefilled of the first chain of the prompt.
        first: dict[tuple, int] = {}
        for j, c in enumerate(chains):
            first.setdefault(tuple(c.prompt), j)
        kvs = decoder.prefill([chains[j].prompt[:-1] for j in first.values()])
        for j in first.values():
            chains[j].prefilled += len(chains[j].prompt) - 1
        by_prompt = {key: kv for key, kv in zip(first, kvs, strict=True)}
        for j, c in enumerate(chains):
            c.prompt_kv = by_prompt[tuple(c.prompt)]
            self._advance(j, c, decoder, t0)
        while decoder.has_work:
            for row in decoder.step():
                j = row.tag
                self._on_proposal(chains[j], row, decoder)
                self._advance(j, chains[j], decoder, t0)
        return [self._record(c) for c in chains]

    def _propose(self, j: int, chain: _Chain, cut: int, decoder: RollingDecoder) -> None:
        """Queue the proposal prompt + x_{<cut} → q until EOS or the block's cap.

        The row reuses the cache of prompt + x_{<cut-1}: the prompt's shared cache (P - 1
        columns), then the first ``cut`` columns of the chain's answer cache (the prompt's
        last token, x_0 .. x_{cut-2}); it feeds the one token before the cut, so a proposal
        re-encodes a single token whatever its prefix.
        """
        token = chain.tokens[cut - 1] if cut > 0 else chain.prompt[-1]
        pieces = [chain.prompt_kv]
        if cut > 0:
            pieces.append(chain.answer_kv[:, :, :, :cut])
        chain.cut = cut
        chain.prefilled += 1
        decoder.add(pieces, token, chain.caps[chain.block] - cut, j, stream=chain.stream)

    def _advance(self, j: int, chain: _Chain, decoder, t0: float) -> None:
        """Queue the chain's next proposal, or close blocks until it needs one or is done."""
        steps = self.params["mcmc_steps"]
        while True:
            if not chain.extended:
                chain.extended = True
                chain.accepted_at_block_start = chain.accepted
                # Extension: the first block starts from the empty answer (L = 0); it is a
                # plain proposal draw and is taken as the chain's state without an
                # acceptance test. Answers ending with EOS (stop_at_eos false) are complete:
                # not extended.
                if not chain.eos:
                    chain.in_extension = True
                    self._propose(j, chain, len(chain.tokens), decoder)
                    return
            if chain.steps < steps:
                L = len(chain.tokens)  # >= 1 after a block's extension
                cut = min(int(chain.stream.random() * L), L - 1)
                self._propose(j, chain, cut, decoder)
                return
            chain.trace.append(
                {
                    "block": chain.block,
                    "length": len(chain.tokens),
                    "proposals": steps,
                    "accepted": chain.accepted - chain.accepted_at_block_start,
                    "logp": float(chain.logp.sum()),
                }
            )
            last = chain.block == len(chain.caps) - 1
            if last or (chain.eos and self.params["stop_at_eos"]):
                chain.lifetime_s = time.perf_counter() - t0
                chain.prompt_kv = chain.answer_kv = None  # free the caches
                return
            chain.block += 1
            chain.extended = False
            chain.steps = 0

    def _on_proposal(self, chain: _Chain, row: Finished, decoder: RollingDecoder) -> None:
        """A proposal came back: take it (extension) or accept/reject it (MH step)."""
        i = chain.cut
        prop_logp, prop_logq = row.stats.logp.numpy(), row.stats.logq.numpy()  # [n] each
        eos = row.finish_reason == "eos"
        chain.decoded += len(row.tokens)
        if chain.in_extension:
            chain.in_extension = False
            chain.replace_suffix(i, row.tokens, row.stats, eos)
            chain.answer_kv = decoder.kv(row, skip=len(chain.prompt) - 1)
            return
        chain.steps += 1
        chain.proposals += 1
        if self.params["greedy_accept"]:
            accept = float(prop_logp.sum()) >= float(chain.logp[i:].sum())
        else:
            log_r = log_acceptance(
                self.alpha,
                chain.logp[i:],
                chain.logq[i:],
                prop_logp,
                prop_logq,
                len(chain.tokens),
                i + len(row.tokens),
            )
            u = chain.stream.random()
            # u < min(1, r)  ⇔  log u < log r  (u in [0, 1), log 0 = -inf)
            accept = log_r >= 0 or math.log(max(u, 1e-300)) < log_r
        if accept:
            chain.accepted += 1
            chain.replace_suffix(i, row.tokens, row.stats, eos)
            chain.answer_kv = decoder.kv(row, skip=len(chain.prompt) - 1)

    def _record(self, chain: _Chain) -> dict:
        rec = completion_record(
            chain.tokens,
            torch.from_numpy(chain.logp),
            torch.from_numpy(chain.entropy),
            torch.from_numpy(chain.top1),
            "eos" if chain.eos else "length",
            temperature=self.temperature,
            tokens_decoded=chain.decoded,
            tokens_prefilled=chain.prefilled,
            token_budget=chain.caps[-1],
            acceptance_rate=chain.accepted / chain.proposals if chain.proposals else None,
            proposals=chain.proposals,
            sampler_trace=chain.trace,
            logq=torch.from_numpy(chain.logq),
        )
        rec["chain_lifetime_s"] = chain.lifetime_s
        return rec
