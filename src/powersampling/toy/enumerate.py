"""Exact enumeration of every answer of a tiny model, and exact power-sampling kernels.

With a vocabulary of a few tokens and answers of a few tokens, every answer the sampler
can produce can be listed. For each we compute, by batched teacher forcing:

* log p(x)   under the base model (T=1, full vocabulary),
* log q(x)   under the proposal (token-level temperature, optional top-k),

and from them, exactly:

* π_α(x) ∝ p(x)^α, the power distribution restricted to the length cap,
* q(x), the distribution of plain token-level sampling,
* the Metropolis–Hastings kernel of the power sampler (cut index uniform over the
  answer, suffix regenerated with q until EOS or the cap, whole-suffix acceptance),
* the exact output distribution of the whole block procedure (extend by a block, run
  N MH steps, stop after the block in which the chain ends with EOS), and the exact
  expected number of tokens it decodes per answer.

The *support at cap c* is exactly the sampler's state space for that cap: the answers
that end with EOS and have at most c tokens (EOS included), plus the answers of exactly c
tokens without EOS (cut off by the cap; their p is the prefix probability, so p sums to
one over the support). Only answers the proposal can produce (q > 0, which matters with
top-k) are listed, because a chain never leaves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from powersampling.errors import UserError


def random_tiny_model(
    vocab_size: int = 4,
    *,
    seed: int = 0,
    hidden_size: int = 16,
    num_layers: int = 1,
    logit_scale: float = 1.0,
    init_std: float = 0.02,
):
    """A randomly initialised Qwen2 small enough to enumerate (float32, eval mode, CPU).

    ``logit_scale`` multiplies the LM head so the next-token distributions are peaked
    enough for power sampling and temperature sampling to differ measurably.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    with torch.random.fork_rng(devices=[]):  # HF initialisation draws from the global RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


@dataclass
class Support:
    """Every answer at one length cap, with per-token log-probabilities.

    ``cum_logp[j][t]`` is the sum of the first t token log-probabilities of answer j
    (length ``lengths[j] + 1``), likewise ``cum_logq``; q(x_{≥i} | x_{<i}) is then
    ``exp(cum_logq[j][-1] - cum_logq[j][i])``.
    """

    prompt: list[int]
    cap: int
    answers: list[tuple[int, ...]]
    ends_with_eos: np.ndarray  # bool [S]
    lengths: np.ndarray  # int [S]
    cum_logp: list[np.ndarray]
    cum_logq: list[np.ndarray]

    @property
    def logp(self) -> np.ndarray:
        return np.array([c[-1] for c in self.cum_logp])

    @property
    def logq(self) -> np.ndarray:
        return np.array([c[-1] for c in self.cum_logq])

    def __len__(self) -> int:
        return len(self.answers)

    def index(self) -> dict[tuple[int, ...], int]:
        return {a: j for j, a in enumerate(self.answers)}


def _next_token_logprobs(model, prompt, prefixes, temperature, top_k):
    """Log p and log q of the next token after prompt + each prefix (all the same length)."""
    ids = torch.tensor([list(prompt) + list(p) for p in prefixes], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1, :].double()  # [n, V]
    logp = F.log_softmax(logits, dim=-1)
    scaled = logits / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    logq = F.log_softmax(scaled, dim=-1)
    return logp.numpy(), logq.numpy()


def enumerate_answers(
    model,
    prompt: list[int],
    eos_token_ids: list[int],
    cap: int,
    *,
    proposal_temperature: float = 1.0,
    top_k: int | None = None,
    max_answers: int = 20000,
) -> Support:
    """List every answer of at most ``cap`` tokens with exact per-token log p and log q.

    Grows prefixes level by level; every level is one batched forward pass over all
    live prefixes (they share a length, so no padding is needed).
    """
    if cap < 1:
        raise UserError(f"the length cap must be at least 1, got {cap}")
    if not prompt:
        raise UserError("the prompt must contain at least one token")
    eos = set(eos_token_ids)
    answers, flags, cum_p, cum_q = [], [], [], []
    live = [((), np.zeros(1), np.zeros(1))]  # (tokens, cum logp, cum logq)
    for t in range(cap):
        if not live:
            break
        logp, logq = _next_token_logprobs(
            model, prompt, [x for x, _, _ in live], proposal_temperature, top_k
        )
        nxt = []
        for row, (x, cp, cq) in enumerate(live):
            for v in np.flatnonzero(np.isfinite(logq[row])):
                y = x + (int(v),)
                cpy = np.append(cp, cp[-1] + logp[row, v])
                cqy = np.append(cq, cq[-1] + logq[row, v])
                if int(v) in eos or t + 1 == cap:
                    answers.append(y)
                    flags.append(int(v) in eos)
                    cum_p.append(cpy)
                    cum_q.append(cqy)
                else:
                    nxt.append((y, cpy, cqy))
        if len(answers) + len(nxt) > max_answers:
            raise UserError(
                f"more than {max_answers} answers to enumerate; use a smaller vocabulary or cap"
            )
        live = nxt
    return _support(list(prompt), cap, answers, flags, cum_p, cum_q)


def _support(prompt, cap, answers, flags, cum_p, cum_q) -> Support:
    return Support(
        prompt=prompt,
        cap=cap,
        answers=answers,
        ends_with_eos=np.array(flags, dtype=bool),
        lengths=np.array([len(a) for a in answers]),
        cum_logp=cum_p,
        cum_logq=cum_q,
    )


def restrict(support: Support, cap: int) -> Support:
    """The support at a smaller cap: short EOS answers kept, longer ones cut to ``cap`` tokens."""
    if cap > support.cap:
        raise UserError(f"cannot restrict a support at cap {support.cap} to a larger cap {cap}")
    seen: dict[tuple[int, ...], int] = {}
    answers, flags, cum_p, cum_q = [], [], [], []
    for a, eos, cp, cq in zip(
        support.answers, support.ends_with_eos, support.cum_logp, support.cum_logq, strict=True
    ):
        if len(a) <= cap and (eos or len(a) == cap):
            key, keep_eos, cp2, cq2 = a, bool(eos), cp, cq
        elif len(a) > cap:
            key, keep_eos, cp2, cq2 = a[:cap], False, cp[: cap + 1], cq[: cap + 1]
        else:  # a non-EOS answer shorter than the cap cannot exist in a support
            raise AssertionError("malformed support")
        if key in seen:
            continue
        seen[key] = len(answers)
        answers.append(key)
        flags.append(keep_eos)
        cum_p.append(cp2)
        cum_q.append(cq2)
    return _support(support.prompt, cap, answers, flags, cum_p, cum_q)


def _normalise_log(logw: np.ndarray) -> np.ndarray:
    w = np.exp(logw - logw.max())
    return w / w.sum()


def power_distribution(support: Support, alpha: float) -> np.ndarray:
    """π_α over the support: p(x)^α renormalised (exact)."""
    return _normalise_log(alpha * support.logp)


def proposal_distribution(support: Support) -> np.ndarray:
    """The distribution of plain token-level sampling with the proposal q (sums to one)."""
    return np.exp(support.logq)


def _moves(support: Support):
    """Every MH move of the power sampler over ``support``: for each state x and cut i,
    yield (x, i, ys, q_fwd) with ys the states that share x_{<i} (the proposal's support)
    and q_fwd[k] = log q(ys[k]_{≥i} | x_{<i}) (which sums to one in probability)."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for j, a in enumerate(support.answers):
        for i in range(len(a)):
            by_prefix.setdefault(a[:i], []).append(j)
    for x, a in enumerate(support.answers):
        for i in range(len(a)):
            ys = np.array(by_prefix[a[:i]])
            q_fwd = np.array([support.cum_logq[y][-1] - support.cum_logq[y][i] for y in ys])
            yield x, i, ys, q_fwd


def mh_kernel(support: Support, alpha: float, *, greedy_accept: bool = False) -> np.ndarray:
    """The power sampler's one-step Metropolis–Hastings transition matrix K[x, y].

    From x (length L) the cut i is uniform over 0..L-1; the proposal y shares x_{<i} and is
    drawn with probability q(y_{≥i} | x_{<i}) (until EOS or the cap); it is accepted with
    min(1, p(y)^α q(x_{≥i}|x_{<i}) (1/L_y) / [p(x)^α q(y_{≥i}|x_{<i}) (1/L)]), or, with
    ``greedy_accept``, iff p(y) ≥ p(x).
    """
    n = len(support)
    logp = support.logp
    kernel = np.zeros((n, n))
    for x, i, ys, q_fwd in _moves(support):
        length = support.lengths[x]
        q_rev = support.cum_logq[x][-1] - support.cum_logq[x][i]
        if greedy_accept:
            accept = (logp[ys] >= logp[x]).astype(float)
        else:
            log_ratio = (
                alpha * (logp[ys] - logp[x])
                + q_rev
                - q_fwd
                + np.log(length)
                - np.log(support.lengths[ys])
            )
            accept = np.exp(np.minimum(log_ratio, 0.0))
        np.add.at(kernel[x], ys, np.exp(q_fwd) * accept / length)
    kernel[np.arange(n), np.arange(n)] += 1.0 - kernel.sum(axis=1)
    return kernel


def proposal_lengths(support: Support) -> np.ndarray:
    """Expected tokens one MH proposal decodes from each state x (EOS included):
    Σ_i (1/L) Σ_y q(y_{≥i} | x_{<i}) (L_y − i), the cut i uniform over 0..L-1."""
    cost = np.zeros(len(support))
    for x, i, ys, q_fwd in _moves(support):
        cost[x] += float(np.exp(q_fwd) @ (support.lengths[ys] - i)) / support.lengths[x]
    return cost


def extension_matrix(short: Support, long: Support, *, keep_finished: bool = False) -> np.ndarray:
    """E[x, y]: probability that extending x (a non-EOS answer at the short cap) with q
    until EOS or the long cap gives y. Rows of EOS answers are zero (they are finished),
    or with ``keep_finished`` map the answer to itself (it stays, unchanged)."""
    index = {a: j for j, a in enumerate(short.answers)}
    ext = np.zeros((len(short), len(long)))
    c = short.cap
    for y, b in enumerate(long.answers):
        if len(b) > c:
            x = index[b[:c]]
            ext[x, y] = np.exp(long.cum_logq[y][-1] - long.cum_logq[y][c])
        elif keep_finished:  # an EOS answer that fits the short cap
            ext[index[b], y] = 1.0
    return ext


def block_caps(block_size: int, max_new_tokens: int) -> list[int]:
    """Length caps of the successive blocks: min(k·B, max_new_tokens) for k = 1, 2, ..."""
    if block_size < 1 or max_new_tokens < 1:
        raise UserError("block_size and max_new_tokens must be positive")
    from powersampling.samplers.power import block_caps as caps

    return caps(block_size, max_new_tokens)


def sampler_distribution(
    support: Support,
    alpha: float,
    block_size: int,
    mcmc_steps: int | list[int],
    *,
    greedy_accept: bool = False,
    stop_at_eos: bool = True,
    by_block: bool = False,
    with_cost: bool = False,
) -> np.ndarray | tuple[np.ndarray, float | np.ndarray]:
    """Exact output distribution of the block procedure over ``support`` (the final cap).

    ``mcmc_steps`` is the number of MH steps after every block, or a list with one entry
    per block. A chain whose state ends with EOS after a block's steps is finished (with
    ``stop_at_eos`` false it stays, without extension, until the last block).
    With ``by_block`` the result is [n_blocks, S]: row k is the probability of finishing
    in block k with each answer (the rows sum to the output distribution).

    With ``with_cost`` the result is (distribution, tokens): ``tokens`` is the exact
    expected number of tokens a chain decodes, counted as
    :class:`~powersampling.samplers.power.PowerSampler` counts ``tokens_decoded`` (the
    new tokens of every block extension and of every MH proposal, EOS included): the
    first block's extension is a q-draw (expected length Σ q(x) L_x); a later block's
    extension decodes, from each active non-EOS state x at the previous cap, the expected
    new tokens of its extensions; each MH step decodes :func:`proposal_lengths` of the
    state it starts from. With ``by_block`` ``tokens`` is [n_blocks] (expected tokens
    decoded in each block; they sum to the total).
    """
    caps = block_caps(block_size, support.cap)
    steps = [mcmc_steps] * len(caps) if isinstance(mcmc_steps, int) else list(mcmc_steps)
    if len(steps) != len(caps):
        raise UserError(f"need one mcmc_steps entry per block ({len(caps)}), got {len(steps)}")
    final_index = support.index()
    out = np.zeros((len(caps), len(support)))
    cost = np.zeros(len(caps))
    prev, active = None, None
    for k, (cap, n_steps) in enumerate(zip(caps, steps, strict=True)):
        sup = support if cap == support.cap else restrict(support, cap)
        if k == 0:
            dist = proposal_distribution(sup)
            if with_cost:
                cost[k] += float(dist @ sup.lengths)
        else:
            ext = extension_matrix(prev, sup, keep_finished=not stop_at_eos)
            dist = active @ ext
            if with_cost:  # new tokens L_y − L_x (zero for a finished answer kept as is)
                new = sup.lengths[None, :] - prev.lengths[:, None]
                cost[k] += float(active @ (ext * new).sum(axis=1))
        if n_steps:
            kernel = mh_kernel(sup, alpha, greedy_accept=greedy_accept)
            if with_cost:
                per_step, d = proposal_lengths(sup), dist
                for _ in range(n_steps):
                    cost[k] += float(d @ per_step)
                    d = d @ kernel
            dist = dist @ np.linalg.matrix_power(kernel, n_steps)
        last = k == len(caps) - 1
        done = sup.ends_with_eos if stop_at_eos else np.zeros(len(sup), dtype=bool)
        for j in np.flatnonzero(done | last):
            out[k, final_index[sup.answers[j]]] += dist[j]
        active = np.where(done, 0.0, dist)
        prev = sup
    result = out if by_block else out.sum(axis=0)
    if with_cost:
        return result, (cost if by_block else float(cost.sum()))
    return result


def expected_tokens_decoded(
    support: Support,
    alpha: float,
    block_size: int,
    mcmc_steps: int | list[int],
    *,
    greedy_accept: bool = False,
    stop_at_eos: bool = True,
) -> float:
    """Exact expected ``tokens_decoded`` of one power-sampler chain (see
    :func:`sampler_distribution` with ``with_cost``)."""
    return sampler_distribution(
        support,
        alpha,
        block_size,
        mcmc_steps,
        greedy_accept=greedy_accept,
        stop_at_eos=stop_at_eos,
        with_cost=True,
    )[1]


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def goodness_of_fit(
    counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0
) -> tuple[float, int, float]:
    """G-test of observed ``counts`` against exact cell ``probs``: (G, degrees of freedom, p).

    Cells with expected count below ``min_expected`` are pooled into one cell (and that
    cell with the next-rarest ones until it reaches ``min_expected``), so the chi-square
    approximation holds. A count in a cell of probability zero gives p = 0.
    """
    from scipy import stats

    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float) / np.sum(probs)
    n = counts.sum()
    if np.any(counts[probs <= 0] > 0):
        return math.inf, 0, 0.0
    expected = probs * n
    order = np.argsort(expected)
    pooled_obs, pooled_exp = 0.0, 0.0
    k = 0
    while k < len(order) and (expected[order[k]] < min_expected or 0 < pooled_exp < min_expected):
        pooled_obs += counts[order[k]]
        pooled_exp += expected[order[k]]
        k += 1
    obs = list(counts[order[k:]]) + ([pooled_obs] if pooled_exp > 0 else [])
    exp = list(expected[order[k:]]) + ([pooled_exp] if pooled_exp > 0 else [])
    if len(obs) < 2:
        return 0.0, 0, 1.0
    g, pvalue = stats.power_divergence(obs, exp, lambda_="log-likelihood")
    return float(g), len(obs) - 1, float(pvalue)
