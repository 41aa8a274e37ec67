"""A question's hidden-state summary: what the model itself makes of the prompt (MLP-HQ).

The embedding of a prompt is the mean, over its tokens, of the residual stream after decoder
block ``layer`` (0-based; by default the middle block, ``n_blocks // 2``) in the model's own
forward pass over the prompt. Prompts run left-padded in batches; padding is masked and left
out of the mean. The forward pass stops at that block: the blocks above it would not change
the summary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from powersampling.anatomy import anatomy, block_hidden, forward_hooks
from powersampling.errors import UserError


class _Captured(Exception):
    """Raised by the hook once the block's output is taken: ends the forward pass there."""


def default_layer(n_blocks: int) -> int:
    """The middle block: n_blocks // 2."""
    return n_blocks // 2


@torch.no_grad()
def question_embeddings(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    layer: int | None = None,
    batch_size: int = 16,
    pad_token_id: int = 0,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """The embeddings of the prompts, float32 [n, hidden], and the block they were read at."""
    parts = anatomy(model, what="question embeddings", name=name)
    layer = default_layer(parts.n_blocks) if layer is None else int(layer)
    if not 0 <= layer < parts.n_blocks:
        raise UserError(
            f"embedding layer {layer} is outside the model's blocks 0..{parts.n_blocks - 1}"
        )
    if any(len(p) == 0 for p in prompt_ids):
        raise UserError("a question embedding needs a non-empty prompt")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def take(module, args, output):
        captured.append(block_hidden(output))
        raise _Captured

    out = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = [list(p) for p in prompt_ids[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        captured.clear()
        with forward_hooks([(parts.blocks[layer], take)]):
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            except _Captured:
                pass
        hidden = captured[0].float()  # [b, T, H]
        weights = mask.unsqueeze(-1).float()  # [b, T, 1]
        out.append(((hidden * weights).sum(1) / weights.sum(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float32), layer
