"""Sequential Monte Carlo power sampling: N weighted particles per prompt, one batch.

The target is that of the power sampler: π_α(x) ∝ p(x)^α over the answers at the token
budget c (answers ending with EOS of at most c tokens, and answers of exactly c tokens
without EOS, whose p is the prefix's). Power-SMC (arXiv 2602.10273) reaches it with
importance weights instead of Metropolis–Hastings moves. Per prompt:

1. N particles start from the empty answer, each with log weight 0.
2. At step t = 1, 2, ... every unfinished particle draws its next token x_t from the
   proposal q (token-level temperature ``proposal_temperature``, default 1/α; optional
   top-k) and its log weight grows by α_t·log p(x_t | x_<t) − log q(x_t | x_<t). A particle
   that draws EOS, or reaches the budget, is finished: it keeps its tokens and its weight.
3. Every ``resample_every`` steps the effective sample size ESS = (Σw)² / Σw² is checked;
   below ``ess_threshold``·N the particles are resampled (systematic resampling: N
   offspring, the i-th at (u + i)/N on the cumulative normalised weights, one uniform u),
   the mean weight goes into the normalizing-constant estimate Ẑ, and weights reset to 1.
4. Once every particle is finished, Ẑ takes the final mean weight, and the answer is one
   particle drawn with probability proportional to its weight.

The α ramp (``alpha_ramp_tokens`` = R > 0) tempers the first steps: α_t = 1 + (α − 1)·t/R
up to t = R, then α. The intermediate target at step t is then p(x_{≤t})^{α_t}, so every
particle, finished or not, also gains (α_t − α_{t−1})·log p of what it has so far (the
catch-up term), and if every particle finishes before the ramp ends the remaining
(α − α_t)·log p is added before the final draw: the final target stays p^α.

Why it is exact. Let a finished particle stay where it is with incremental weight 1
(times the catch-up term under a ramp) and let an unfinished one move by q: this is a
Feynman–Kac model whose unnormalised target at the last step is p(x)^α on the support
above. So Σ_i w_i f(x_i) / Σ_i w_i → E_π[f] as N grows (the output's bias is O(1/N)),
and Ẑ estimates Z = Σ_x p(x)^α without bias for any N when the resampling times do not
depend on the particles (``ess_threshold`` 0: never, plain importance sampling; 1: at
every check, since equal weights are then the only case that skips it and the estimate is
unchanged by resampling equal weights); resampling on the ESS is consistent but only
asymptotically unbiased. With α = 1 and the proposal at temperature 1, every weight is 1
and the output is a plain draw from p. Power-SMC's public code departs from this target:
it samples from top-p 0.9, bans EOS for the first 100 tokens and stops at ``\\boxed{}``.

Batching: the particles of every prompt of a call decode in lockstep in one batch
(:class:`~powersampling.engine.particles.ParticleBatch`, at most the engine's
``max_batch_size`` rows: as many prompts per batch as fit, at least one). Resampling copies
a particle's KV cache to another row of its prompt; nothing is recomputed. A particle
keeps its row when it is its ancestor's first offspring, so only duplicates cost a copy.
Rows of a finished particle stay in the batch (fed a token, their output ignored) while
their prompt runs, since resampling may need them again; rows of finished prompts are
dropped once they are half the batch. ``tokens_decoded`` counts the tokens of unfinished
particles, the sampler's own compute; the idle rows' steps are the batch's price.

Randomness: one ``numpy.random.Generator`` per prompt (its ``chain_seeds`` entry) makes
every choice of that prompt's particles: N uniforms per step (one per particle, drawn
whether it is finished or not, tokens by the inverse CDF of q), one per resampling and one
for the final draw. So an answer depends on its prompt, budget and seed alone (up to float
rounding of the batched forward passes), not on the other prompts of the call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

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

STAT_NAMES = ("logp", "logq", "entropy", "top1")  # the rows of a particle's statistics


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Ancestor indices of N offspring from normalised ``weights`` [N] and one uniform ``u``:
    offspring i takes the particle whose cumulative-weight interval holds (u + i) / N."""
    n = len(weights)
    cdf = np.cumsum(weights)
    cdf[-1] = 1.0  # rounding must not leave the last position past the end
    return np.minimum(np.searchsorted(cdf, (u + np.arange(n)) / n, side="right"), n - 1)


def log_mean_exp(logw: np.ndarray) -> float:
    top = float(np.max(logw))
    return top + math.log(float(np.mean(np.exp(logw - top))))


def normalised(logw: np.ndarray) -> np.ndarray:
    w = np.exp(logw - np.max(logw))
    return w / w.sum()


@dataclass
class _Answer:
    """A finished particle: its tokens and per-token statistics (float64 [4, n])."""

    tokens: np.ndarray
    stats: np.ndarray
    eos: bool


@dataclass
class Swarm:
    """The particles of one prompt at the end: what :meth:`SMCSampler.sample_swarms` returns.

    ``weights`` are the normalised final weights; the output (``record``) is the particle
    ``chosen``, drawn from them. ``log_z`` is log Ẑ, the estimate of Σ_x p(x)^α.
    """

    answers: list[tuple[int, ...]]
    weights: np.ndarray
    log_z: float
    tokens_decoded: int
    resamples: int
    chosen: int
    record: dict


@dataclass
class _Particles:
    """The N particles of one prompt while it runs."""

    prompt: list[int]
    budget: int
    stream: np.random.Generator
    owned: list[int]  # batch rows this prompt may use
    row: np.ndarray  # [N] batch row of each unfinished particle, -1 once finished
    done: list[_Answer | None]  # each finished particle's answer
    logw: np.ndarray  # [N] log weights since the last resampling
    logp_sum: np.ndarray  # [N] log p of each particle's answer so far
    log_z: float = 0.0  # log Ẑ accumulated at resamplings
    decoded: int = 0
    prefilled: int = 0
    resamples: int = 0
    trace: list[dict] = field(default_factory=list)
    traced_resamples: int = 0  # resamplings already counted in a trace record
    swarm: Swarm | None = None  # set when the prompt is finished


class SMCSampler(PerProblemStreams, Sampler):
    """Sequential Monte Carlo power sampling (see the module docstring), batched over prompts.

    Its ``sampler_trace`` has a record every ``trace_every`` tokens (at the first ESS check
    from there), and a last one when every particle is finished (:data:`TRACE_FIELDS`): a
    record per token would be thousands per answer on real benchmarks.
    """

    name = "smc"
    DECODER = "particles"
    PARAMS = {
        "alpha": ALPHA,
        "particles": Param(
            {"type": "integer", "minimum": 1}, "Particles (N) per prompt.", default=32
        ),
        "ess_threshold": Param(
            {"type": "number", "minimum": 0, "maximum": 1},
            "Resample when the effective sample size falls below this fraction of N "
            "(0: never, plain importance sampling; 1: at every check).",
            default=0.5,
        ),
        "resample_every": Param(
            {"type": "integer", "minimum": 1},
            "Check the effective sample size every this many tokens.",
            default=1,
        ),
        "max_new_tokens": LONG_ANSWERS,
        "proposal_temperature": PROPOSAL_TEMPERATURE,
        "proposal_top_k": PROPOSAL_TOP_K,
        "trace_every": Param(
            {"type": "integer", "minimum": 1},
            "Record the ESS and the normalizing-constant estimate in sampler_trace every "
            "this many tokens (and when the last particle finishes). Changes no answer.",
            default=32,
        ),
        "alpha_ramp_tokens": Param(
            {"type": "integer", "minimum": 0},
            "Raise the exponent linearly from 1 to alpha over this many first tokens "
            "(0: alpha from the start); the final target is p^alpha either way.",
            default=0,
        ),
    }
    TRACE_FIELDS = {
        "token": "tokens per unfinished particle at the check",
        "ess": "effective sample size at the check, before resampling, in particles (1..N)",
        "resampled": "resamplings since the previous record",
        "log_z": "log of the running normalizing-constant estimate (the last record: of Z)",
        "alive": "particles not yet finished",
        "decoded": "tokens decoded so far by all the prompt's particles",
    }

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        self.alpha, self.temperature = power_target(self.params)
        self.n = int(self.params["particles"])

    @classmethod
    def rows_per_prompt(cls, params: dict[str, Any]) -> int:
        return int(params["particles"])  # a prompt's particles decode together

    @classmethod
    def expected_tokens(
        cls, params: dict[str, Any], answer_tokens: float, settings: dict | None = None
    ) -> float:
        """N particles decode an answer of ``answer_tokens`` each (at most the budget):
        ``tokens_decoded`` counts every token of an unfinished particle, resampled or not."""
        return params["particles"] * min(float(answer_tokens), params["max_new_tokens"])

    def alpha_at(self, t: int) -> float:
        """The exponent of the intermediate target after t tokens (t >= 1)."""
        ramp = self.params["alpha_ramp_tokens"]
        if ramp == 0 or t >= ramp:
            return self.alpha
        return 1.0 + (self.alpha - 1.0) * max(t, 1) / ramp

    # ------------------------------------------------------------------ entry points

    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator | None,
        budgets: list[int] | None = None,
        chain_seeds: list[int] | None = None,
    ) -> list[dict]:
        """One completion per prompt: a particle drawn by its final weight.

        ``budgets`` as for every sampler; ``chain_seeds``: one integer >= 0 per prompt, the
        seed of its particles' stream (None: drawn from ``generator``).
        """
        return [s.record for s in self.sample_swarms(prompts, generator, budgets, chain_seeds)]

    def sample_swarms(
        self,
        prompts: list[list[int]],
        generator: torch.Generator | None = None,
        budgets: list[int] | None = None,
        chain_seeds: list[int] | None = None,
    ) -> list[Swarm]:
        """Every prompt's final particles and weights (:class:`Swarm`), with its output."""
        t0 = time.perf_counter()
        budgets = token_budgets(budgets, len(prompts), self.params["max_new_tokens"])
        chain_seeds = row_seeds(chain_seeds, generator, len(prompts))
        if not prompts:
            return []
        self.engine.check_rows([list(q) for q in prompts], budgets, "new tokens")
        per_batch = len(prompts)
        if self.engine.max_batch_size is not None:
            per_batch = max(1, self.engine.max_batch_size // self.n)
        swarms: list[Swarm] = []
        for start in range(0, len(prompts), per_batch):
            stop = start + per_batch
            swarms += self._run(
                prompts[start:stop], budgets[start:stop], chain_seeds[start:stop], t0
            )
        return swarms

    # ------------------------------------------------------------------ one batch

    def _run(self, prompts, budgets, seeds, t0) -> list[Swarm]:
        # Imported here: config validation reads PARAMS from this module at every workflow
        # start, and the engine pulls in transformers (seconds).
        from powersampling.engine.particles import ParticleBatch
        from powersampling.engine.tokens import pick_tokens

        n, engine = self.n, self.engine
        horizon = max(budgets)
        batch = ParticleBatch(engine, [list(q) for q in prompts], n, horizon)
        groups = []
        seen: set[tuple[int, ...]] = set()
        for g, (q, b, seed) in enumerate(zip(prompts, budgets, seeds, strict=True)):
            rows = list(range(g * n, (g + 1) * n))
            groups.append(
                _Particles(
                    prompt=list(q),
                    budget=b,
                    stream=np.random.default_rng(int(seed)),
                    owned=rows,
                    row=np.array(rows),
                    done=[None] * n,
                    logw=np.zeros(n),
                    logp_sum=np.zeros(n),
                    # Each distinct prompt is encoded once, counted for its first prompt.
                    prefilled=0 if tuple(q) in seen else len(q),
                )
            )
            seen.add(tuple(q))
        # Per batch row: tokens [rows, horizon] and statistics [4, rows, horizon] so far.
        hist_tok = np.zeros((batch.rows, horizon), dtype=np.int64)
        hist = np.zeros((len(STAT_NAMES), batch.rows, horizon))
        eos_ids = np.array(engine.eos_token_ids)
        for t in range(horizon):  # t tokens decoded so far by every unfinished particle
            running = [grp for grp in groups if grp.swarm is None]
            uniforms = np.zeros(batch.rows)
            for grp in running:  # N draws per prompt and step, whatever is finished
                u = grp.stream.random(n)
                live = grp.row >= 0
                uniforms[grp.row[live]] = u[live]
            tok, picked = pick_tokens(
                batch.logits,
                self.temperature,
                self.params["proposal_top_k"],
                False,
                None,
                torch.from_numpy(uniforms).to(engine.device),
            )
            stats = torch.stack(picked.tensors()).double().cpu().numpy()  # [4, rows]
            tok_np = tok.cpu().numpy()
            hist_tok[:, t] = tok_np
            hist[:, :, t] = stats
            is_eos = np.isin(tok_np, eos_ids)
            copies: list[tuple[int, int]] = []
            for grp in running:
                self._advance(grp, t + 1, stats, is_eos, hist_tok, hist, copies, t0)
            if copies:
                dst, src = zip(*copies, strict=True)
                batch.copy_rows(list(dst), list(src))
                hist_tok[list(dst)] = hist_tok[list(src)]
                hist[:, list(dst)] = hist[:, list(src)]
                tok[list(dst)] = tok[list(src)]
            running = [grp for grp in groups if grp.swarm is None]
            if not running:
                break
            owned = sum(len(grp.owned) for grp in running)
            if 2 * owned <= batch.rows:
                keep = [r for grp in running for r in grp.owned]
                hist_tok, hist = hist_tok[keep], hist[:, keep]
                tok = tok[torch.tensor(keep, device=tok.device)]
                self._renumber(running, keep)
                batch.keep_rows(keep)
            batch.step(tok)
        return [grp.swarm for grp in groups]

    def _advance(self, grp, t, stats, is_eos, hist_tok, hist, copies, t0) -> None:
        """Weigh the t-th token of the prompt's unfinished particles, finish those that end,
        check the ESS, and close the prompt once every particle is finished."""
        live = grp.row >= 0
        rows = grp.row[live]
        a_t, a_prev = self.alpha_at(t), self.alpha_at(t - 1)
        grp.logw += (a_t - a_prev) * grp.logp_sum  # the ramp's catch-up (0 without a ramp)
        grp.logw[live] += a_t * stats[0, rows] - stats[1, rows]
        grp.logp_sum[live] += stats[0, rows]
        grp.decoded += len(rows)
        ending = np.zeros_like(live)
        ending[live] = is_eos[rows] | (t >= grp.budget)
        for i in np.flatnonzero(ending):
            r = grp.row[i]
            grp.done[i] = _Answer(hist_tok[r, :t].copy(), hist[:, r, :t].copy(), bool(is_eos[r]))
            grp.row[i] = -1
        alive = int((grp.row >= 0).sum())
        if alive and t % self.params["resample_every"] == 0:
            self._check(grp, t, alive, copies)
            alive = int((grp.row >= 0).sum())  # resampling may keep finished particles only
        if alive == 0:
            self._close(grp, t, a_t, t0)

    def _check(self, grp, t, alive, copies) -> None:
        """One ESS check; resample below the threshold (row copies go to ``copies``)."""
        ess = 1.0 / float(np.sum(normalised(grp.logw) ** 2))
        resample = ess < self.params["ess_threshold"] * self.n
        running_log_z = grp.log_z + log_mean_exp(grp.logw)
        if resample:
            ancestors = systematic_resample(normalised(grp.logw), grp.stream.random())
            self._resample(grp, ancestors, copies)
            grp.log_z = running_log_z
            grp.logw = np.zeros(self.n)
            grp.resamples += 1
        last = grp.trace[-1]["token"] if grp.trace else 0.0
        if t - last >= self.params["trace_every"]:
            self._trace(grp, t, ess, running_log_z, alive)

    @staticmethod
    def _trace(grp, t: int, ess: float, log_z: float, alive: int) -> None:
        grp.trace.append(
            {
                "token": float(t),
                "ess": ess,
                "resampled": float(grp.resamples - grp.traced_resamples),
                "log_z": log_z,
                "alive": float(alive),
                "decoded": float(grp.decoded),
            }
        )
        grp.traced_resamples = grp.resamples

    @staticmethod
    def _resample(grp, ancestors: np.ndarray, copies: list[tuple[int, int]]) -> None:
        """Offspring i becomes a copy of particle ``ancestors[i]``. An unfinished ancestor's
        first offspring keeps its row; further ones take free rows of the prompt (copied)."""
        old_rows, old_done = grp.row, grp.done
        new_rows = np.full(len(ancestors), -1)
        claimed: set[int] = set()
        for i, a in enumerate(ancestors):
            if old_rows[a] >= 0 and old_rows[a] not in claimed:
                new_rows[i] = old_rows[a]
                claimed.add(int(old_rows[a]))
        free = iter(r for r in grp.owned if r not in claimed)
        for i, a in enumerate(ancestors):
            if old_rows[a] >= 0 and new_rows[i] < 0:
                new_rows[i] = next(free)
                copies.append((int(new_rows[i]), int(old_rows[a])))
        grp.row = new_rows
        grp.done = [old_done[a] for a in ancestors]
        grp.logp_sum = grp.logp_sum[ancestors]

    def _close(self, grp, t, a_t, t0) -> None:
        """Every particle is finished: the final weights, Ẑ, the drawn answer."""
        grp.logw += (self.alpha - a_t) * grp.logp_sum  # the rest of the ramp, if any
        weights = normalised(grp.logw)
        log_z = grp.log_z + log_mean_exp(grp.logw)
        cdf = np.cumsum(weights)
        chosen = min(
            int(np.searchsorted(cdf, grp.stream.random() * cdf[-1], side="right")), self.n - 1
        )
        self._trace(grp, t, 1.0 / float(np.sum(weights**2)), log_z, 0)
        answer = grp.done[chosen]
        logp, logq, entropy, top1 = (torch.from_numpy(s) for s in answer.stats)
        record = completion_record(
            [int(x) for x in answer.tokens],
            logp,
            entropy,
            top1,
            "eos" if answer.eos else "length",
            temperature=self.temperature,
            tokens_decoded=grp.decoded,
            tokens_prefilled=grp.prefilled,
            token_budget=grp.budget,
            sampler_trace=grp.trace,
            logq=logq,
        )
        record["chain_lifetime_s"] = time.perf_counter() - t0
        grp.swarm = Swarm(
            answers=[tuple(int(x) for x in a.tokens) for a in grp.done],
            weights=weights,
            log_z=log_z,
            tokens_decoded=grp.decoded,
            resamples=grp.resamples,
            chosen=chosen,
            record=record,
        )

    @staticmethod
    def _renumber(running, keep: list[int]) -> None:
        """Rows ``keep`` become rows 0..len(keep)-1: update every running prompt's rows."""
        new = {old: i for i, old in enumerate(keep)}
        for grp in running:
            grp.owned = [new[r] for r in grp.owned]
            grp.row = np.array([new[r] if r >= 0 else -1 for r in grp.row])
