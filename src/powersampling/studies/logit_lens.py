"""LogitLens: every block's residual stream read out through the final norm and LM head.

Rules: ``logit_lens_shard`` and ``collect_logit_lens`` (rules/interp.smk); library:
:mod:`powersampling.interp.logit_lens`; figures: ``study="logit_lens"``.
"""

from __future__ import annotations

from typing import Any

import yaml

from powersampling.studies.base import Study, base_model, undefined_names

SCHEMA = yaml.safe_load(
    """
    description: >
      LogitLens: each model answers the tasks' problems greedily, then the residual
      stream after every decoder block is read out through the final norm and LM head;
      KL from the model's output, top-1 agreement and entropy per layer, at the last
      prompt token and over the answer. One job per task, model and shard.
    type: object
    additionalProperties: false
    required: [tasks, models]
    properties:
      tasks: {$ref: "#/$defs/names"}
      models: {$ref: "#/$defs/names"}
      max_new_tokens:
        description: Budget of the greedy answer the lens reads over.
        type: integer
        minimum: 1
        default: 64
      batch_size:
        description: Sequences per forward pass.
        type: integer
        minimum: 1
        default: 16
"""
)


class LogitLensStudy(Study):
    name = "logit_lens"
    RULES = "rules/interp.smk"
    SCHEMA = SCHEMA
    EXPANDS_TRUNCATIONS = True

    def check(self, config: dict[str, Any]) -> list[str]:
        return undefined_names(config, self.name, ("tasks", "models"))

    def model_uses(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        return [(base_model(config, m), "LogitLens") for m in self.section(config)["models"]]
