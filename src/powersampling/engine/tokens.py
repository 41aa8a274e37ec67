"""Token choice and per-token statistics, shared by the batch engine and the rolling decoder.

For each new token both engines record ``log p`` (the base model at temperature 1 over the
full vocabulary), ``log q`` (the distribution the token was actually drawn from: temperature
and optional top-k applied), and the entropy and top-1 probability of the base distribution:
a :class:`TokenStats`.

Randomness, two ways. With a ``generator``, sampling draws with
``torch.multinomial(..., generator=generator)``; the generator must live on the model's device
(a CUDA generator for a model on CUDA, e.g. ``powersampling.seeding.torch_generator(seed,
model.device)``). On CPU the same generator state gives the same tokens, but the draws a row
gets depend on the batch it is in (its place and the other rows): reproducibility is per call.
With ``uniforms`` (one number in [0, 1) per row, from the row's own random stream), each row's
token is the inverse of q's CDF at its number, so what a row draws depends on its stream alone,
never on the other rows of the batch (the power sampler's chains use this).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from powersampling.errors import UserError


@dataclass
class TokenStats:
    """Per-token statistics of chosen tokens; the four tensors have the same shape.

    :func:`pick_tokens` returns them as float32 [b] on the model's device; the engines keep
    them as float64 (buffers [rows, tokens] while decoding, [n] per finished row on the CPU).
    Indexing (``stats[rows, col]``, ``stats[j, :n]``) and assignment index all four at once.
    """

    logp: torch.Tensor  # log p of the token: base model, T=1, full vocabulary
    logq: torch.Tensor  # log q: the distribution it was drawn from (0 when greedy)
    entropy: torch.Tensor  # nats, of the base distribution (T=1)
    top1: torch.Tensor  # probability of the base distribution's most likely token

    @classmethod
    def zeros(cls, *shape: int, device=None) -> TokenStats:
        """float64 buffers of ``shape``, all zero."""
        return cls(*(torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(4)))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(logp, logq, entropy, top1)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TokenStats:
        """``fn`` applied to each of the four tensors."""
        return TokenStats(*(fn(t) for t in self.tensors()))

    def __getitem__(self, index) -> TokenStats:
        return self.map(lambda t: t[index])

    def __setitem__(self, index, value: TokenStats) -> None:
        for t, v in zip(self.tensors(), value.tensors(), strict=True):
            t[index] = v.to(t.dtype)  # float32 -> float64 is exact

    def cpu(self) -> TokenStats:
        return self.map(torch.Tensor.cpu)

    def clone(self) -> TokenStats:
        return self.map(torch.Tensor.clone)


def log_q(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Log-probabilities of the sampling distribution: softmax(logits / T) on the top-k logits.

    Ties with the k-th largest logit are all kept (so the support is deterministic and the same
    when extending and when scoring); tokens outside the support get ``-inf``. Computed in
    float32 whatever the model's dtype.
    """
    z = logits.float() / temperature  # [..., V]
    if top_k is not None and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]  # [..., 1]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def is_base_distribution(temperature: float, top_k: int | None, vocab_size: int) -> bool:
    """Whether q is p itself (T=1, no effective top-k), so log p can be reused as log q."""
    return temperature == 1 and (top_k is None or top_k >= vocab_size)


def pick_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    greedy: bool,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, TokenStats]:
    """Choose one token per row from logits [b, V]: the tokens [b] and their float32 stats.

    Greedy takes the first maximum (the lowest id among ties) and has ``logq`` 0; otherwise
    one draw per row from q: ``torch.multinomial`` with ``generator``, or, given ``uniforms``
    (float64 [b] in [0, 1), on the logits' device), :func:`inverse_cdf_draw`.
    """
    logp_all = torch.log_softmax(logits.float(), dim=-1)  # [b, V] base model, T=1
    p = logp_all.exp()
    entropy = -torch.where(p > 0, p * logp_all, 0.0).sum(-1)  # [b]; 0·log 0 = 0
    top1 = p.max(-1).values  # [b]
    if greedy:
        tok = logits.argmax(-1)  # [b]
        logq = torch.zeros_like(top1)
    else:
        same = is_base_distribution(temperature, top_k, logits.shape[-1])
        logq_all = logp_all if same else log_q(logits, temperature, top_k)  # [b, V]
        if uniforms is None:
            tok = torch.multinomial(logq_all.exp(), 1, generator=generator).squeeze(1)  # [b]
        else:
            tok = inverse_cdf_draw(logq_all.exp(), uniforms)
        logq = logq_all.gather(1, tok[:, None]).squeeze(1)
    logp = logp_all.gather(1, tok[:, None]).squeeze(1)
    return tok, TokenStats(logp, logq, entropy, top1)


def inverse_cdf_draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative probability exceeds u·total: probs [b, V],
    uniforms [b] in [0, 1) → tokens [b].

    The CDF is summed in float64 and u is scaled by the row's total, so rounding of the
    probabilities never leaves u past the end; a token of probability 0 is never chosen (the
    CDF does not rise there), also when rounding of u·total reaches the total itself.
    """
    cdf = probs.double().cumsum(-1)  # [b, V]
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(1)  # [b, 1]
    tok = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [b]
    last = cdf.argmax(-1)  # the first column reaching the total: the last token with p > 0
    return torch.where(tok < probs.shape[-1], tok, last)


def row_budgets(max_new_tokens: int | list[int], n: int) -> list[int]:
    """One integer budget >= 0 per row, from one budget for all or a list of ``n``."""
    many = not isinstance(max_new_tokens, int) and hasattr(max_new_tokens, "__len__")
    values = list(max_new_tokens) if many else [max_new_tokens] * n
    if len(values) != n:
        raise UserError(f"max_new_tokens has {len(values)} entries for {n} prefixes")
    try:
        budgets = [operator.index(b) for b in values]
    except TypeError:
        budgets = [-1]
    if any(b < 0 for b in budgets):
        raise UserError(f"max_new_tokens must be integers >= 0 (got {max_new_tokens!r})")
    return budgets


def check_sampling(temperature: float, top_k: int | None, greedy: bool = False) -> None:
    """Temperature > 0 and top-k a positive integer or None (nothing to check when greedy)."""
    if greedy:
        return
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise UserError(
            f"temperature must be a number > 0 (got {temperature!r}); use greedy decoding for T=0"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be a positive integer or null (got {top_k!r})")


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """The generator (if any) lives on the model's device type, as multinomial needs."""
    if generator is not None and generator.device.type != device.type:
        raise UserError(
            f"the generator is on {generator.device} but the model is on {device}; "
            "create it on the model's device"
        )
