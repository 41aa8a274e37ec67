"""Units and the fixed allowances every memory plan uses."""

from __future__ import annotations

from powersampling.engine.rolling import KV_STORES

GIB = 2**30

# The CUDA context (about 0.5 GiB, already gone from a free-memory reading taken after CUDA
# started), cuBLAS/cuDNN workspaces and the allocator's rounding: one fixed amount.
RESERVE_BYTES = 1 * GIB
# PyTorch's caching allocator cannot always reuse freed blocks for tensors that grow by
# one column per step: 5% of everything except the reserve is kept free for that.
HEADROOM = 0.05
# pick_tokens holds, at its widest, the model's logits plus about six float32 [rows, vocab]
# tensors: log p, p, the entropy's p·log p (and its masked copy) or, when sampling, the
# scaled logits, log q, q and multinomial's working copy.
LOGITS_FLOAT32_COPIES = 6
# PyTorch's pinned (page-locked) host allocator rounds every block up to a power of two,
# so caches kept in host memory may take up to twice their size.
PINNED_ROUNDING = 2
# Prompt tokens assumed when planning a config before any prompt is tokenised.
DEFAULT_PROMPT_TOKENS = 512
CHAIN_STORES = KV_STORES  # where the power sampler keeps prompt and chain caches


def gib(n: float) -> str:
    """Bytes as GiB with one decimal, the unit of every plan."""
    return f"{n / GIB:.1f} GiB"
