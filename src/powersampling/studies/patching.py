"""Activation patching on clean/corrupted prompt pairs, every layer and prompt position.

Rules: ``patching_shard`` and ``collect_patching`` (rules/interp.smk); library:
:mod:`powersampling.interp.patching`; figures: ``study="patching"``.
"""

from __future__ import annotations

from typing import Any

import yaml

from powersampling.studies.base import Study, base_model, undefined_names

SCHEMA = yaml.safe_load(
    """
    description: >
      Activation patching on pairs tasks: the corrupted prompt runs with the clean
      run's residual stream written in at one (layer, position), for every layer and
      prompt position. One job per task, model and shard.
    type: object
    additionalProperties: false
    required: [tasks, models]
    properties:
      tasks:
        description: Tasks of kind 'pairs'.
        $ref: "#/$defs/names"
      models: {$ref: "#/$defs/names"}
      max_batch:
        description: >-
          Patched copies of a prompt per forward pass (all positions of one layer,
          in chunks of this many).
        type: integer
        minimum: 1
        default: 64
"""
)


class PatchingStudy(Study):
    name = "patching"
    RULES = "rules/interp.smk"
    SCHEMA = SCHEMA
    EXPANDS_TRUNCATIONS = True

    def check(self, config: dict[str, Any]) -> list[str]:
        problems = undefined_names(config, self.name, ("tasks", "models"))
        for name in self.section(config)["tasks"]:
            kind = config["tasks"].get(name, {}).get("kind", "pairs")
            if kind != "pairs":
                problems.append(
                    f"studies.patching.tasks: {name!r} is a {kind} task; patching needs pairs"
                )
        return problems

    def model_uses(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        return [(base_model(config, m), "patching") for m in self.section(config)["models"]]

    def outputs(self, config: dict[str, Any]) -> list[str]:
        return ["results/tables/patching_pairs.csv"]
