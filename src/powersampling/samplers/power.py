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

Batching: all active chains of all prompts advance together; every extension and every
MH step is one :meth:`~powersampling.engine.DecodingEngine.extend` call over every active
chain's prefix, with per-row token budgets. All random choices (tokens, cut indices,
accept draws) come from the one generator passed to :meth:`PowerSampler.sample`.

Cost note: each proposal re-encodes prompt + x_{<i} (counted in ``tokens_prefilled``);
KV caches are not reused across steps. Prefill is one parallel forward per step, so on
an accelerator the sequential decoding of the new suffix dominates the cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from powersampling.errors import UserError
from powersampling.samplers import (
    Sampler,
    check_positive_float,
    check_positive_int,
    completion_record,
)


def block_caps(block_size: int, max_new_tokens: int) -> list[int]:
    """Length caps of the successive blocks: min(k·B, max_new_tokens) for k = 1, 2, ..."""
    n_blocks = -(-max_new_tokens // block_size)
    return [min(k * block_size, max_new_tokens) for k in range(1, n_blocks + 1)]


@dataclass
class _Chain:
    """One Markov chain: its current answer with per-token statistics, and its counters."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    # Per-token float64 numpy arrays [L] (cheaper to splice than tiny torch tensors).
    logp: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # base model at T=1, full vocabulary
    logq: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the proposal distribution
    entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eos: bool = False  # the current answer ends with an EOS token
    proposals: int = 0
    accepted: int = 0
    decoded: int = 0
    prefilled: int = 0
    trace: list[dict] = field(default_factory=list)
    wall_time_s: float = math.nan

    def replace_suffix(self, cut: int, ext, row: int) -> None:
        """Keep tokens [0, cut) and append row ``row`` of the extension ``ext``."""
        self.tokens = self.tokens[:cut] + ext.tokens[row]
        self.logp = np.concatenate([self.logp[:cut], ext.logp[row].numpy()])
        self.logq = np.concatenate([self.logq[:cut], ext.logq[row].numpy()])
        self.entropy = np.concatenate([self.entropy[:cut], ext.entropy[row].numpy()])
        self.top1 = np.concatenate([self.top1[:cut], ext.top1[row].numpy()])
        self.eos = ext.finish_reason[row] == "eos"


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


class PowerSampler(Sampler):
    """Exact block-wise Metropolis–Hastings power sampling, batched over prompts.

    Params: ``alpha`` (4.0), ``block_size`` (192), ``max_new_tokens`` (3072),
    ``mcmc_steps`` (10 per block; 0 gives plain block-wise proposal sampling),
    ``proposal_temperature`` (None → 1/alpha), ``proposal_top_k`` (None),
    ``greedy_accept`` (False; True is the α→∞ variant: accept iff p does not decrease),
    ``stop_at_eos`` (True: a chain leaves after the block in which it ends with EOS).
    For several chains per prompt, repeat the prompt.
    """

    name = "power"
    PARAMS = {
        "alpha": 4.0,
        "block_size": 192,
        "max_new_tokens": 3072,
        "mcmc_steps": 10,
        "proposal_temperature": None,
        "proposal_top_k": None,
        "greedy_accept": False,
        "stop_at_eos": True,
    }

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        p = self.params
        check_positive_float(self.name, "alpha", p["alpha"])
        check_positive_int(self.name, "block_size", p["block_size"])
        check_positive_int(self.name, "max_new_tokens", p["max_new_tokens"])
        steps = p["mcmc_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise UserError(f"sampler 'power': mcmc_steps must be an integer >= 0 (got {steps!r})")
        if p["proposal_temperature"] is None:
            p["proposal_temperature"] = 1.0 / float(p["alpha"])
        check_positive_float(self.name, "proposal_temperature", p["proposal_temperature"])
        check_positive_int(self.name, "proposal_top_k", p["proposal_top_k"], allow_none=True)
        for flag in ["greedy_accept", "stop_at_eos"]:
            if not isinstance(p[flag], bool):
                raise UserError(f"sampler 'power': {flag} must be true or false (got {p[flag]!r})")
        self.alpha = float(p["alpha"])
        self.temperature = float(p["proposal_temperature"])
        self.caps = block_caps(p["block_size"], p["max_new_tokens"])

    # ------------------------------------------------------------------ engine calls

    def _extend(self, chains: list[_Chain], cuts: list[int], cap: int, generator):
        """One batched proposal: prompt + x_{<cut} extended with q until EOS or ``cap``."""
        prefixes = [c.prompt + c.tokens[:i] for c, i in zip(chains, cuts, strict=True)]
        ext = self.engine.extend(
            prefixes,
            [cap - i for i in cuts],
            temperature=self.temperature,
            top_k=self.params["proposal_top_k"],
            generator=generator,
        )
        for row, (chain, prefix) in enumerate(zip(chains, prefixes, strict=True)):
            chain.decoded += len(ext.tokens[row])
            chain.prefilled += len(prefix)
        return ext

    def _uniforms(self, n: int, generator) -> torch.Tensor:
        device = generator.device if generator is not None else "cpu"
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()

    def _mh_step(self, chains: list[_Chain], cap: int, generator) -> None:
        """One Metropolis–Hastings step for every chain, with one engine call."""
        lengths = [len(c.tokens) for c in chains]  # all >= 1 after a block's extension
        u_cut = self._uniforms(len(chains), generator)
        cuts = [min(int(u * n), n - 1) for u, n in zip(u_cut.tolist(), lengths, strict=True)]
        ext = self._extend(chains, cuts, cap, generator)
        u_acc = self._uniforms(len(chains), generator).tolist()
        for row, (chain, i, n) in enumerate(zip(chains, cuts, lengths, strict=True)):
            chain.proposals += 1
            if self.params["greedy_accept"]:
                accept = float(ext.logp[row].sum()) >= float(chain.logp[i:].sum())
            else:
                log_r = log_acceptance(
                    self.alpha,
                    chain.logp[i:],
                    chain.logq[i:],
                    ext.logp[row],
                    ext.logq[row],
                    n,
                    i + len(ext.tokens[row]),
                )
                # u < min(1, r)  ⇔  log u < log r  (u in [0, 1), log 0 = -inf)
                accept = log_r >= 0 or math.log(max(u_acc[row], 1e-300)) < log_r
            if accept:
                chain.accepted += 1
                chain.replace_suffix(i, ext, row)

    # ------------------------------------------------------------------ main loop

    def sample(self, prompts: list[list[int]], generator: torch.Generator) -> list[dict]:
        """One power-sampled completion per prompt (repeat a prompt for several chains).

        ``wall_time_s`` of a row is the time from the start of the call until its chain
        finished (chains run together, so it is an elapsed time, not a private cost).
        """
        t0 = time.perf_counter()
        chains = [_Chain(prompt=list(p)) for p in prompts]
        active = list(chains)
        for k, cap in enumerate(self.caps):
            if not active:
                break
            # Extension: the first block starts from the empty answer (L = 0); it is a plain
            # proposal draw and is taken as the chain's state without an acceptance test.
            # Chains kept after EOS (stop_at_eos false) are complete answers: not extended.
            growing = [c for c in active if not c.eos]
            if growing:
                ext = self._extend(growing, [len(c.tokens) for c in growing], cap, generator)
                for row, chain in enumerate(growing):
                    chain.replace_suffix(len(chain.tokens), ext, row)
            accepted_before = [c.accepted for c in active]
            for _ in range(self.params["mcmc_steps"]):
                self._mh_step(active, cap, generator)
            last = k == len(self.caps) - 1
            still = []
            for chain, before in zip(active, accepted_before, strict=True):
                chain.trace.append(
                    {
                        "block": k,
                        "length": len(chain.tokens),
                        "proposals": self.params["mcmc_steps"],
                        "accepted": chain.accepted - before,
                        "logp": float(chain.logp.sum()),
                    }
                )
                if last or (chain.eos and self.params["stop_at_eos"]):
                    chain.wall_time_s = time.perf_counter() - t0
                else:
                    still.append(chain)
            active = still
        return [self._record(c) for c in chains]

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
            acceptance_rate=chain.accepted / chain.proposals if chain.proposals else None,
            proposals=chain.proposals,
            block_trace=chain.trace,
        )
        rec["wall_time_s"] = chain.wall_time_s
        return rec
