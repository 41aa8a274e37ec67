"""Samplers: turn prompts into completions through one decoding engine.

A method in the config is ``{sampler: NAME, ...params}``; :func:`get_sampler` builds the
sampler class registered under ``NAME`` with those params. Every sampler returns, per prompt,
one dict with the generation-schema fields of :data:`powersampling.io.GENERATION_SCHEMA`
(see :func:`completion_record`); run-level fields (task, model, seed, ...) are added by
:func:`powersampling.generation.generate_shard`.

A new sampler is one module with a :class:`Sampler` subclass (its ``PARAMS`` are the only
definition of its parameters) and one line in :data:`SAMPLERS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from powersampling.errors import UserError
from powersampling.samplers.base import (
    REQUIRED,
    Param,
    Sampler,
    completion_record,
    resolve_params,
)

__all__ = [
    "REQUIRED",
    "SAMPLERS",
    "Param",
    "Sampler",
    "completion_record",
    "get_sampler",
    "method_params",
    "method_schema",
    "resolve_params",
    "sampler_class",
    "sampler_names",
]

# name → "module:Class"; a sampler's module (and what it imports) loads only when asked for.
SAMPLERS: dict[str, str] = {
    "greedy": "powersampling.samplers.basic:GreedySampler",
    "temperature": "powersampling.samplers.basic:TemperatureSampler",
    "power": "powersampling.samplers.power:PowerSampler",
    # Sequential Monte Carlo towards the same target: N weighted particles per prompt.
    "smc": "powersampling.samplers.smc:SMCSampler",
    # Dynamic power sampling: power-sampled trajectories until a trained controller stops.
    "dps": "powersampling.samplers.dps:DynamicPowerSampler",
}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def sampler_class(name: str) -> type[Sampler]:
    """The class registered under ``name``."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; known: {sampler_names()}")
    module_name, class_name = SAMPLERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(
            f"sampler {name!r} is not available (module {module_name} missing)"
        ) from err
    return getattr(module, class_name)


def method_schema() -> dict[str, Any]:
    """JSON Schema of one config method, ``{sampler: NAME, ...params}``, from the samplers.

    One ``if sampler == NAME then ...`` branch per sampler lists exactly its parameters,
    so an unknown, missing or out-of-range parameter is reported under its own key.
    """
    branches = []
    for name in sampler_names():
        params = sampler_class(name).PARAMS
        branches.append(
            {
                "if": {"required": ["sampler"], "properties": {"sampler": {"const": name}}},
                "then": {
                    "required": [key for key, param in params.items() if param.required],
                    "additionalProperties": False,
                    "properties": {
                        "sampler": True,
                        **{key: param.json_schema() for key, param in params.items()},
                    },
                },
            }
        )
    return {
        "type": "object",
        "required": ["sampler"],
        "properties": {"sampler": {"enum": sampler_names()}},
        "allOf": branches,
    }


def method_params(method: dict[str, Any]) -> dict[str, Any]:
    """A method's parameters with its sampler's defaults filled in (no model needed)."""
    cls = sampler_class(method["sampler"])
    return resolve_params(cls.name, cls.PARAMS, {k: v for k, v in method.items() if k != "sampler"})


def get_sampler(method: dict[str, Any], engine) -> Sampler:
    """Build the sampler a method config names: ``{sampler: NAME, ...params}``."""
    if not isinstance(method, dict) or "sampler" not in method:
        raise UserError(
            f"a method needs a 'sampler' key (one of {sampler_names()}); got {method!r}"
        )
    cls = sampler_class(method["sampler"])
    return cls(engine, **{k: v for k, v in method.items() if k != "sampler"})
