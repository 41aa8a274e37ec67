"""LogitLens: how close each decoder block's residual stream already is to the model's answer.

After every block ℓ the residual stream is read out the way the model reads out its last
block (final norm, OPT's projection out, LM head; see :mod:`powersampling.anatomy`), giving a
next-token distribution p_ℓ, which is compared with the model's own output distribution
p_final: KL(p_final ‖ p_ℓ), whether the two agree on the top token, and the entropy of p_ℓ.
The comparison is made where the answer is decided: at the last prompt token (the
distribution of the answer's first token) and averaged over every position that predicts an
answer token.

Block outputs are captured with forward hooks, not ``output_hidden_states``: ``transformers``
replaces the last of those with the *normed* final state, so reading it out through the final
norm would normalise twice. With hooks, the last block's readout is exactly what the model
computes, so its KL is zero, a check that the lens reads out the right place.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from powersampling.anatomy import Anatomy, anatomy, block_hidden, forward_hooks
from powersampling.errors import UserError
from powersampling.interp.tables import LENS_METRICS

COLUMNS = ["row", "layer", "n_layers", "position", "n_positions", "kl", "top1_agree", "entropy"]
METRICS = LENS_METRICS

# Full-vocabulary float64 log-probabilities are formed for at most this many entries
# (positions x vocabulary) at a time: 2**24 entries are 128 MiB per tensor.
_MAX_LOGIT_ENTRIES = 2**24


def _check_inputs(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> None:
    if len(sequences) != len(prompt_lengths):
        raise UserError(
            f"logit_lens needs one prompt length per sequence: got {len(sequences)} sequences "
            f"and {len(prompt_lengths)} prompt lengths"
        )
    for i, (seq, p) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        if not 1 <= p <= len(seq):
            raise UserError(
                f"sequence {i}: prompt length {p} must lie in 1..{len(seq)} (the sequence length)"
            )


def _position_metrics(logp: torch.Tensor, logq: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """KL(p ‖ q), top-1 agreement and entropy of q per position, from float64 log-probs
    [N, V] of the final distribution p and the lens distribution q."""
    p, q = logp.exp(), logq.exp()
    # 0 * log 0 = 0: a token the model never predicts contributes nothing, even at -inf.
    kl = torch.where(p > 0, p * (logp - logq), 0.0).sum(-1)  # [N]
    entropy = -torch.where(q > 0, q * logq, 0.0).sum(-1)  # [N]
    top1 = (logq.argmax(-1) == logp.argmax(-1)).double()  # [N]
    return kl, top1, entropy


def _batch_metrics(
    model, parts: Anatomy, seqs: list[list[int]], prompts: list[int], pad_token_id: int
) -> tuple[torch.Tensor, list[int]]:
    """Per-position metrics [3 (kl, top1, entropy), n_layers, N] of one batch and how many of
    the N used positions belong to each sequence, from one forward pass."""
    device = model.device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1

    # The used positions of row b: prompt_len-1 (last prompt) .. len-2 (last answer
    # predictor); just the first when the answer is empty. Flattened to N positions.
    counts = [max(len(s) - p, 1) for s, p in zip(seqs, prompts, strict=True)]
    at_row = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(counts))  # [N]
    at_pos = torch.cat(
        [torch.arange(p - 1, p - 1 + c) for p, c in zip(prompts, counts, strict=True)]
    )
    at_row, at_pos = at_row.to(device), at_pos.to(device)

    n_layers = parts.n_blocks
    hidden: list[torch.Tensor | None] = [None] * n_layers  # block ℓ -> [N, H]

    def capture(layer: int):
        def hook(module, args, output) -> None:
            # Only the used positions are kept (advanced indexing copies them).
            hidden[layer] = block_hidden(output)[at_row, at_pos]

        return hook

    with (
        torch.inference_mode(),
        forward_hooks([(block, capture(i)) for i, block in enumerate(parts.blocks)]),
    ):
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
        ).logits  # [B, T, V]
        final = logits[at_row, at_pos]  # [N, V]
        del logits
        if any(h is None for h in hidden):
            raise RuntimeError("LogitLens: not every decoder block ran in the forward pass")
        metrics = torch.empty((3, n_layers, final.shape[0]), dtype=torch.float64)
        chunk = max(1, _MAX_LOGIT_ENTRIES // final.shape[-1])
        for lo in range(0, final.shape[0], chunk):
            logp = torch.log_softmax(final[lo : lo + chunk].double(), -1)  # [n, V]
            for layer, h in enumerate(hidden):
                logq = torch.log_softmax(parts.readout(h[lo : lo + chunk]).double(), -1)
                for k, values in enumerate(_position_metrics(logp, logq)):
                    metrics[k, layer, lo : lo + chunk] = values.cpu()
    return metrics, counts


def logit_lens(
    model,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    *,
    batch_size: int = 16,
    pad_token_id: int,
    name: str | None = None,
) -> pd.DataFrame:
    """LogitLens metrics of every decoder block for prompt + answer token sequences.

    ``sequences[i]`` is a prompt of ``prompt_lengths[i]`` tokens followed by the model's
    answer (possibly empty). Each batch of ``batch_size`` sequences takes one forward pass,
    right-padded with ``pad_token_id`` and masked (a causal model's real positions never see
    the padding, and their position ids are unchanged). The model should be in eval mode.

    Returns one row per (sequence, block, position kind) with columns :data:`COLUMNS`:
    ``row`` (index into ``sequences``), ``layer`` (0-based block), ``n_layers``,
    ``position`` ("last_prompt": the last prompt token, predicting the answer's first token;
    "answer": the mean over the positions prompt_len-1 .. len-2 that predict the answer's
    tokens, absent for an empty answer), ``n_positions``, ``kl`` = KL(p_final ‖ p_layer) in
    nats, ``top1_agree`` (fraction of positions where the argmaxes agree) and ``entropy`` of
    p_layer in nats. The last block's KL is 0 up to rounding.

    Memory, per batch: the residual stream of every block at the used positions only
    (n_layers x N x H in the model's dtype, N = the batch's answer positions plus one per
    empty answer), the model's logits at those positions (N x V) after its own [B, T, V]
    output is dropped, and float64 log-probabilities for at most ``2**24 / V`` positions of
    one block at a time; full-vocabulary logits of all blocks are never held together.
    ``name`` names the model in the error raised for an unsupported architecture.
    """
    parts = anatomy(model, what="LogitLens", name=name)
    _check_inputs(sequences, prompt_lengths)
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    n_layers = parts.n_blocks
    # Similar lengths together: less padding. The results do not depend on the grouping.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    records = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        seqs = [list(sequences[i]) for i in batch]
        prompts = [int(prompt_lengths[i]) for i in batch]
        metrics, counts = _batch_metrics(model, parts, seqs, prompts, pad_token_id)
        offset = 0
        for i, seq, p, count in zip(batch, seqs, prompts, counts, strict=True):
            span = metrics[:, :, offset : offset + count]  # [3, n_layers, count]
            offset += count
            for layer in range(n_layers):
                kinds = [("last_prompt", 1, span[:, layer, 0])]
                if len(seq) > p:
                    kinds.append(("answer", len(seq) - p, span[:, layer].mean(-1)))
                for position, n_positions, values in kinds:
                    kl, top1, entropy = values.tolist()
                    records.append((i, layer, n_layers, position, n_positions, kl, top1, entropy))
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    # "last_prompt" before "answer" for each (row, layer).
    return frame.sort_values(
        ["row", "layer", "position"], ascending=[True, True, False], ignore_index=True
    )
