"""Where the parts of a causal LM are: its decoder blocks and the readout after them.

Truncation, LogitLens and activation patching all work on the residual stream between
decoder blocks, and all read it out the way the model reads out its last block: through the
final norm (and, for OPT, the projection out of the residual width) and the LM head. The
families differ only in where those modules live; this module is the one place that knows.
A model of any other family is refused with a message naming it and what is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from powersampling.errors import UserError

# model_type -> (attribute path of the decoder-block list, of the final norm, of the
# projection out of the residual width), relative to the CausalLM's base model
# (``model.get_decoder()``). None: the family has no such module.
FAMILIES: dict[str, tuple[str, str | None, str | None]] = {
    "qwen2": ("layers", "norm", None),
    "qwen3": ("layers", "norm", None),
    "llama": ("layers", "norm", None),
    "phi3": ("layers", "norm", None),
    "mixtral": ("layers", "norm", None),
    "olmoe": ("layers", "norm", None),
    "qwen2_moe": ("layers", "norm", None),
    "qwen3_moe": ("layers", "norm", None),
    # OPT-350m puts its final layer norm inside the blocks (final_layer_norm is None) and
    # projects from the residual width to the embedding width before the head.
    "opt": ("layers", "final_layer_norm", "project_out"),
}


@dataclass
class Anatomy:
    """The decoder blocks of a causal LM and the modules that turn a block's output (the
    residual stream) into next-token logits."""

    blocks: nn.ModuleList
    norm: nn.Module | None
    project_out: nn.Module | None
    lm_head: nn.Module

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] from residual-stream states [..., H], as after the last block."""
        if self.norm is not None:
            hidden = self.norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return self.lm_head(hidden)


def model_type(model) -> str:
    return getattr(model.config, "model_type", type(model).__name__)


def anatomy(model, *, what: str = "this analysis", name: str | None = None) -> Anatomy:
    """The :class:`Anatomy` of ``model``, or a UserError naming the model (``name``, else its
    class) and ``what`` cannot run on it."""
    kind = model_type(model)
    label = name or type(model).__name__
    if kind not in FAMILIES:
        raise UserError(
            f"{what} does not support model {label!r}: its architecture {kind!r} is not one of "
            f"{', '.join(sorted(FAMILIES))} (where its decoder blocks and final norm are is "
            f"not known)"
        )
    blocks_at, norm_at, project_at = FAMILIES[kind]
    base = model.get_decoder()
    blocks = getattr(base, blocks_at, None)
    lm_head = model.get_output_embeddings()
    if not isinstance(blocks, nn.ModuleList) or lm_head is None:
        raise UserError(f"{what} does not support model {label!r}: no decoder blocks or LM head")
    return Anatomy(
        blocks=blocks,
        norm=getattr(base, norm_at) if norm_at else None,
        project_out=getattr(base, project_at, None) if project_at else None,
        lm_head=lm_head,
    )


def block_hidden(output) -> torch.Tensor:
    """The residual stream [B, T, H] from a decoder block's output (a tensor, or a tuple
    whose first item it is, depending on the family and ``transformers`` version)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output, hidden: torch.Tensor):
    """A decoder block's ``output`` with its residual stream replaced by ``hidden``."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def forward_hooks(modules_and_hooks) -> Iterator[None]:
    """Register forward hooks ``[(module, hook), ...]`` for the ``with`` body only: they are
    removed on the way out, exception or not, so no hook outlives its analysis."""
    handles = []
    try:
        for module, hook in modules_and_hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
