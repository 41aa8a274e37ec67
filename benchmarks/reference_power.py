"""The published power-sampling procedure, one proposal at a time (for timing comparisons only).

A re-implementation of the structure of Karan & Du (2025)'s reference code: one problem
at a time; the answer grows by blocks; every block extension and every MH proposal is a
fresh ``model.generate`` call that re-encodes prompt + prefix from scratch; log-probs come
from the returned logits. Its acceptance rule is kept as published (only the overlapping
part of the two suffixes, proposals capped at the current length), which is *not* exact
once EOS appears; :mod:`powersampling.samplers.power` is the exact, batched version. This
module exists so the benchmark compares against the same work done the published way.
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F


@torch.no_grad()
def _propose(model, context: list[int], temperature: float, seq_len: int, eos_id: int):
    """Sample from ``context`` until EOS or ``seq_len`` tokens in all; return the new
    sequence and per-new-token log q (temperature) and α·log p (α = 1/temperature)."""
    device = model.device
    input_ids = torch.tensor([context], dtype=torch.long, device=device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=seq_len - len(context),
        do_sample=True,
        temperature=temperature,
        top_k=0,  # no top-k: the proposal is plain temperature sampling
        top_p=1.0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    raw = torch.stack(out.logits, dim=0)[:, 0].float()  # [n, V] unprocessed logits
    scaled = torch.stack(out.scores, dim=0)[:, 0].float()  # [n, V] after temperature
    new = out.sequences[0, len(context) :]
    idx = new[:, None]
    log_target = (F.log_softmax(raw, -1).gather(1, idx) / temperature).squeeze(1).tolist()
    log_q = F.log_softmax(scaled, -1).gather(1, idx).squeeze(1).tolist()
    return out.sequences[0].tolist(), log_q, log_target


def reference_power_sample(
    model,
    prompt: list[int],
    *,
    eos_id: int,
    alpha: float,
    block_size: int,
    mcmc_steps: int,
    max_new_tokens: int,
    seed: int = 0,
) -> dict:
    """One problem, the published way. Returns completion ids, acceptance rate and counters."""
    rng = random.Random(seed)
    torch.manual_seed(seed)  # generate() draws from the global generator
    temperature = 1.0 / alpha
    c = len(prompt)
    gen = list(prompt)
    log_q: list[float] = []
    log_target: list[float] = []
    proposals = accepted = decoded = prefilled = 0
    t0 = time.perf_counter()
    n_blocks = math.ceil(max_new_tokens / block_size)
    for _ in range(n_blocks):
        target_len = min(len(gen) + block_size, c + max_new_tokens)
        prefilled += len(gen)
        gen, lq, lt = _propose(model, gen, temperature, target_len, eos_id)
        decoded += len(lq)
        log_q.extend(lq)
        log_target.extend(lt)
        for _ in range(mcmc_steps):
            proposals += 1
            t = len(gen)
            idx = rng.randint(c, t - 1)
            prefilled += idx
            prop, lq_prop, lt_prop = _propose(model, gen[:idx], temperature, t, eos_id)
            decoded += len(lq_prop)
            s = len(prop)
            lq_cur = log_q[idx - c : s - c]
            lt_cur = log_target[idx - c : s - c]
            log_r = sum(lt_prop) + sum(lq_cur) - sum(lt_cur) - sum(lq_prop)
            if rng.random() < math.exp(min(log_r, 0.0)):
                accepted += 1
                gen = prop
                log_q[idx - c :] = lq_prop
                log_target[idx - c :] = lt_prop
        if eos_id in gen[c:]:
            end = gen.index(eos_id, c) + 1
            gen, log_q, log_target = gen[:end], log_q[: end - c], log_target[: end - c]
            break
    return {
        "completion_ids": gen[c:],
        "acceptance_rate": accepted / proposals if proposals else None,
        "proposals": proposals,
        "tokens_decoded": decoded,
        "tokens_prefilled": prefilled,
        "wall_time_s": time.perf_counter() - t0,
    }
