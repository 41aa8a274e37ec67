"""Layer-wise activation patching of clean/corrupted prompt pairs.

A pair is a clean prompt and a corrupted one of the same length (one number of the question
changed), the clean answer's tokens and the corrupted answer's tokens. The corrupted prompt
is run with the clean answer teacher-forced after it; then, one (block, position) at a time,
the clean run's residual stream is written into it. How far each patch moves the output back
towards the clean run says where the model carries the information that decides the answer.

The published experiment patched only the placeholder positions and read a single answer
token. Here every real prompt position is patched, at every block, and two readouts are kept:
the next-token distribution at the answer position (its KL from the clean one, and the clean
minus corrupted first-token logit difference M) and the log-probability of the whole clean
answer. A number that spans several tokens, or a model that commits to its answer only after
the first token, shows up in the second and not in the first.

Conventions. ``layer`` ℓ is the output of decoder block ℓ (0-based), i.e. the residual stream
after ℓ + 1 blocks. ``position`` p counts prompt tokens from 0; P - 1 is the answer position
(the last prompt token, whose next-token distribution predicts the answer's first token).
Every forward is a plain unpadded, uncached forward of rows of one length, so no mask or
padding convention enters the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch

from powersampling.anatomy import anatomy, block_hidden, forward_hooks, with_block_hidden
from powersampling.errors import UserError

WHAT = "activation patching"

COLUMNS = [
    "layer",  # block whose output was patched, 0-based
    "n_layers",
    "position",  # prompt position patched, 0-based
    "token",  # clean prompt token at that position (the one patched in)
    "corrupted_token",  # corrupted prompt token there (differs where the number changed)
    "kl",  # KL(p_clean || p_patched) at the answer position, nats
    "logit_diff",  # M: logit[clean_answer[0]] - logit[corrupted_answer[0]] there
    "effect",  # (M - M_corrupted) / (M_clean - M_corrupted): clean 1, corrupted 0, 0/0 NaN
    "answer_logp",  # log p(clean answer | patched prompt), teacher forced, summed
    "clean_logit_diff",  # M_clean
    "corrupted_logit_diff",  # M_corrupted
    "clean_answer_logp",
    "corrupted_answer_logp",  # log p(clean answer | corrupted prompt)
    "corrupted_kl",  # KL(p_clean || p_corrupted): the most any patch can remove
]


def _device(model) -> torch.device:
    """Where input ids go: the device of the token embedding."""
    return model.get_input_embeddings().weight.device


def _forward(model, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits [B, keep or T, V] of unpadded rows ``ids`` [B, T] (``keep`` = 0: every
    position; else the last ``keep``, so a 7B model's head is not run over the whole prompt)."""
    return model(input_ids=ids.to(_device(model)), use_cache=False, logits_to_keep=keep).logits


def residual_stream(
    model, ids: Sequence[int], *, keep: int = 0, name: str | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward of the sequence ``ids`` (length T): its logits [keep or T, V] and every
    block's output, ``resid[ℓ]`` of shape [T, H] (on block ℓ's device, in the model's dtype)."""
    blocks = anatomy(model, what=WHAT, name=name).blocks
    resid: list[torch.Tensor | None] = [None] * len(blocks)

    def capture(layer: int):
        def hook(module, args, output):
            resid[layer] = block_hidden(output)[0]  # [T, H]

        return hook

    with torch.inference_mode(), forward_hooks([(b, capture(i)) for i, b in enumerate(blocks)]):
        logits = _forward(model, torch.tensor([list(ids)]), keep)[0]
    return logits, resid


def patched_logits(
    model,
    ids: Sequence[int],
    layer: int,
    rows: Sequence[Sequence[int]],
    source: torch.Tensor,
    *,
    keep: int = 0,
    name: str | None = None,
) -> torch.Tensor:
    """Logits [R, keep or T, V] of R = len(rows) copies of the sequence ``ids``, where in copy r
    the output of block ``layer`` at each position p in ``rows[r]`` is replaced by
    ``source[p]`` (``source``: [S, H], S > every such p; e.g. a ``resid[layer]`` of
    :func:`residual_stream`). ``rows=[[p] for p in ...]`` patches one position per row;
    ``rows=[range(P)]`` patches a whole prefix in one row."""
    blocks = anatomy(model, what=WHAT, name=name).blocks
    r_idx = torch.tensor([r for r, ps in enumerate(rows) for _ in ps], dtype=torch.long)
    p_idx = torch.tensor([p for ps in rows for p in ps], dtype=torch.long)

    def patch(module, args, output):
        hidden = block_hidden(output)  # [R, T, H]
        at = (r_idx.to(hidden.device), p_idx.to(hidden.device))
        # Out of place: the block's own output tensor stays as the block made it.
        return with_block_hidden(output, hidden.index_put(at, values.to(hidden)))

    ids_rows = torch.tensor([list(ids)]).expand(len(rows), -1)  # [R, T]
    with torch.inference_mode(), forward_hooks([(blocks[layer], patch)]):
        values = source[p_idx.to(source.device)]  # [K, H], K = number of (row, position) patches
        return _forward(model, ids_rows, keep)


def answer_readout(
    logits: torch.Tensor, answer: Sequence[int], clean_first: int, corrupted_first: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From logits [R, A(+1), V] whose ``[:, k]`` predicts ``answer[k]`` (``[:, 0]``: the
    answer position), in float64: the next-token log-distribution at the answer position [R, V], the
    logit difference M [R] and the teacher-forced log p of the whole answer [R]."""
    n = len(answer)
    logits = logits[:, :n].double()  # [R, A, V]
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(list(answer), device=logp.device)[None, :, None].expand(len(logp), -1, 1)
    answer_logp = logp.gather(-1, target)[..., 0].sum(-1)  # [R]
    m = logits[:, 0, clean_first] - logits[:, 0, corrupted_first]  # [R]
    return logp[:, 0], m, answer_logp


def kl(logp_ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) [R] in nats, from log-distributions [V] and [R, V] (float64). Tokens
    with p_ref = 0 add nothing (no 0 · ∞)."""
    p_ref = logp_ref.exp()
    terms = torch.where(p_ref > 0, p_ref * (logp_ref - logp), torch.zeros_like(logp))
    return terms.sum(-1)


def patch_pair(
    model,
    clean_ids: list[int],
    corrupted_ids: list[int],
    clean_answer: list[int],
    corrupted_answer: list[int],
    *,
    max_batch: int = 64,
    name: str | None = None,
) -> pd.DataFrame:
    """Patch the clean residual stream into the corrupted run at every (block, prompt position).

    Both runs teacher-force the clean answer after their prompt. For block ℓ, P rows of
    (corrupted prompt + clean answer) run together (``max_batch`` at a time), row p with the
    clean output of block ℓ at position p written over its own. Returns one row per
    (layer, position), layer-major, with :data:`COLUMNS`; the reference values (M_clean,
    M_corrupted, both answer log-probs, KL of the corrupted run) repeat on every row.

    Peak memory, besides the weights: one chunk of one layer is alive at a time, R =
    min(P, max_batch) rows of length T = P + A (A = len(clean_answer)):
      - the patched block output, R·T·H values in the model's dtype;
      - the model's own activations for an R × T forward (under inference mode a few
        blocks' worth: about R·T·max(H, intermediate), and R·heads·T² for eager attention);
      - the logits at the A + 1 answer-predicting positions, R·(A + 1)·V in the model's
        dtype, then twice in float64 (logits and log-probs).
    The clean residual stream kept across layers is L·T·H, one sequence only. For a 7B
    model (H = 4096, V ≈ 152k) at R = 64, T = 200, A = 4 that is about 0.1 GB of patched
    states and 0.7 GB of float64 logits: lower ``max_batch`` if the activations do not fit.

    Raises UserError if the prompts differ in length, either prompt or answer is empty, or
    the two answers start with the same token (M would be 0 by construction).
    """
    n_pos, n_ans = len(clean_ids), len(clean_answer)
    if len(corrupted_ids) != n_pos:
        raise UserError(
            f"{WHAT}: the clean and corrupted prompts must have the same number of tokens "
            f"(got {n_pos} and {len(corrupted_ids)}): a patched position must be the same "
            f"place in both"
        )
    if n_pos == 0 or n_ans == 0 or not corrupted_answer:
        raise UserError(f"{WHAT}: the prompts and both answers must each have a token")
    a0, b0 = clean_answer[0], corrupted_answer[0]
    if a0 == b0:
        raise UserError(
            f"{WHAT}: the clean and corrupted answers start with the same token ({a0}), so "
            f"their logit difference is 0 whatever is patched; drop this pair"
        )
    if max_batch < 1:
        raise UserError(f"{WHAT}: max_batch must be at least 1 (got {max_batch})")
    keep = n_ans + 1  # positions P-1 .. T-1; the last one (after the answer) is unused

    clean_logits, clean_resid = residual_stream(
        model, clean_ids + clean_answer, keep=keep, name=name
    )
    corrupted_logits, _ = residual_stream(model, corrupted_ids + clean_answer, keep=keep, name=name)
    ref_logp, ref_m, ref_answer = answer_readout(clean_logits[None], clean_answer, a0, b0)
    cor_logp, cor_m, cor_answer = answer_readout(corrupted_logits[None], clean_answer, a0, b0)
    m_clean, m_corrupted = ref_m.item(), cor_m.item()
    denom = m_clean - m_corrupted

    n_layers = len(clean_resid)
    frames = []
    for layer in range(n_layers):
        source = clean_resid[layer][:n_pos]  # [P, H]
        for start in range(0, n_pos, max_batch):
            positions = list(range(start, min(start + max_batch, n_pos)))
            logits = patched_logits(
                model,
                corrupted_ids + clean_answer,
                layer,
                [[p] for p in positions],
                source,
                keep=keep,
                name=name,
            )  # [R, A+1, V]
            logp, m, answer_logp = answer_readout(logits, clean_answer, a0, b0)
            m = m.cpu()
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "n_layers": n_layers,
                        "position": positions,
                        "token": [clean_ids[p] for p in positions],
                        "corrupted_token": [corrupted_ids[p] for p in positions],
                        "kl": kl(ref_logp[0], logp).cpu().numpy(),
                        "logit_diff": m.numpy(),
                        "effect": ((m - m_corrupted) / denom).numpy() if denom else math.nan,
                        "answer_logp": answer_logp.cpu().numpy(),
                    }
                )
            )
            del logits, logp  # the next chunk's forward gets this memory
    out = pd.concat(frames, ignore_index=True)
    out["clean_logit_diff"] = m_clean
    out["corrupted_logit_diff"] = m_corrupted
    out["clean_answer_logp"] = ref_answer.item()
    out["corrupted_answer_logp"] = cor_answer.item()
    out["corrupted_kl"] = kl(ref_logp[0], cor_logp).item()
    return out[COLUMNS]


PAIR_KEYS = ("clean_ids", "corrupted_ids", "clean_answer", "corrupted_answer")


def patch_pairs(
    model,
    pairs: Iterable[Sequence[Sequence[int]] | Mapping],
    *,
    max_batch: int = 64,
    name: str | None = None,
) -> pd.DataFrame:
    """:func:`patch_pair` over ``pairs``, concatenated with a leading ``pair_id`` column.

    A pair is a tuple ``(clean_ids, corrupted_ids, clean_answer, corrupted_answer)``, whose
    pair_id is its index, or a mapping with those keys and optionally ``pair_id``."""
    frames = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, Mapping):
            pair_id = pair.get("pair_id", i)
            args = [pair[k] for k in PAIR_KEYS]
        else:
            pair_id, args = i, list(pair)
        try:
            frame = patch_pair(model, *map(list, args), max_batch=max_batch, name=name)
        except UserError as err:
            raise UserError(f"pair {pair_id!r}: {err}") from err
        frame.insert(0, "pair_id", pair_id)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["pair_id", *COLUMNS])
    return pd.concat(frames, ignore_index=True)
