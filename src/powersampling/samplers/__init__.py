"""Samplers: turn prompts into completions through one decoding engine.

A method in the config is ``{sampler: NAME, ...params}``; :func:`get_sampler` builds the
sampler class registered under ``NAME`` with those params. Every sampler returns, per prompt,
one dict with the generation-schema fields of :data:`powersampling.io.GENERATION_SCHEMA`
(see :func:`completion_record`); run-level fields (task, model, seed, ...) are added by
:func:`powersampling.generation.generate_shard`.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from powersampling.errors import UserError

# Marks a parameter without a default in ``Sampler.PARAMS``.
REQUIRED = object()

# name → "module:Class"; imported only when asked for, so a sampler's module (and its
# dependencies) load only when a config uses it.
_REGISTRY: dict[str, str] = {
    "greedy": "powersampling.samplers.basic:GreedySampler",
    "temperature": "powersampling.samplers.basic:TemperatureSampler",
    "power": "powersampling.samplers.power:PowerSampler",
}


def sampler_names() -> list[str]:
    return sorted(_REGISTRY)


class Sampler(ABC):
    """Draws one completion per prompt.

    Subclasses set ``name`` and ``PARAMS`` (parameter → default, or :data:`REQUIRED`) and
    implement :meth:`sample`. The validated parameters are in ``self.params``.
    """

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(self, engine, **params):
        self.engine = engine
        self.params = resolve_params(self.name, self.PARAMS, params)

    @abstractmethod
    def sample(self, prompts: list[list[int]], generator: torch.Generator) -> list[dict]:
        """One dict per prompt (in order) with the keys of :func:`completion_record`."""


def resolve_params(sampler: str, spec: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` completed with defaults from ``spec``; unknown or missing names are errors."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise UserError(
            f"sampler {sampler!r}: unknown parameter {unknown[0]!r}; it takes {sorted(spec)}"
        )
    missing = [k for k, v in spec.items() if v is REQUIRED and k not in given]
    if missing:
        raise UserError(f"sampler {sampler!r}: missing parameter {missing[0]!r}")
    return {k: given.get(k, v) for k, v in spec.items()}


def check_positive_int(sampler: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise UserError(
            f"sampler {sampler!r}: {name} must be an integer >= 1{extra} (got {value!r})"
        )


def check_positive_float(sampler: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"sampler {sampler!r}: {name} must be a number > 0 (got {value!r})")


def completion_record(
    tokens: list[int],
    logp: torch.Tensor,
    entropy: torch.Tensor,
    top1: torch.Tensor,
    finish_reason: str,
    *,
    temperature: float,
    tokens_decoded: int,
    tokens_prefilled: int,
    acceptance_rate: float | None = None,
    proposals: int | None = None,
    block_trace: list[dict] | None = None,
) -> dict:
    """The per-completion fields of the generation schema.

    ``logp``, ``entropy`` and ``top1`` are per new token (EOS included), from the base model
    at T=1. An empty completion has NaN mean entropy, perplexity and self-confidence.
    """
    n = len(tokens)
    logp_sum = float(logp.sum()) if n else 0.0
    return {
        "completion_ids": [int(t) for t in tokens],
        "n_new_tokens": n,
        "finish_reason": finish_reason,
        "logp_sum": logp_sum,
        "mean_entropy": float(entropy.mean()) if n else math.nan,
        "perplexity": math.exp(-logp_sum / n) if n else math.nan,
        "self_confidence": float(top1.mean()) if n else math.nan,
        "temperature": float(temperature),
        "tokens_decoded": int(tokens_decoded),
        "tokens_prefilled": int(tokens_prefilled),
        "acceptance_rate": acceptance_rate,
        "proposals": proposals,
        "block_trace": block_trace,
    }


def get_sampler(method: dict[str, Any], engine) -> Sampler:
    """Build the sampler a method config names: ``{sampler: NAME, ...params}``."""
    if not isinstance(method, dict) or "sampler" not in method:
        raise UserError(
            f"a method needs a 'sampler' key (one of {sampler_names()}); got {method!r}"
        )
    name = method["sampler"]
    if name not in _REGISTRY:
        raise UserError(f"unknown sampler {name!r}; known: {sampler_names()}")
    module_name, class_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(
            f"sampler {name!r} is not available (module {module_name} missing)"
        ) from err
    cls = getattr(module, class_name)
    params = {k: v for k, v in method.items() if k != "sampler"}
    return cls(engine, **params)
