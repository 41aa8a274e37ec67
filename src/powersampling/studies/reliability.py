"""Temperature reliability: accuracy two ways, compliance, consistency, confidence,
calibration and a failure taxonomy per decoding setting.

Rule: ``collect_reliability`` (rules/reliability.smk); library:
:mod:`powersampling.reliability`; figures: ``study="reliability"``.
"""

from __future__ import annotations

from typing import Any

import yaml

from powersampling.samplers import sampler_class
from powersampling.studies.base import Run, Study, undefined_names

SCHEMA = yaml.safe_load(
    """
    description: >
      How decoding settings change reliability: for each task, model and setting
      (method), accuracy strict (the answer in the required form) and lenient (the last
      number), compliance, consistency across runs, confidence at T = 1 and under the
      sampling distribution, calibration (ECE over equal-mass bins) and a failure
      taxonomy as rates per generation. Greedy settings run once, the others `runs`
      times (seeds 0..runs-1, added to the runs).
    type: object
    additionalProperties: false
    required: [tasks, models, methods]
    properties:
      tasks: {$ref: "#/$defs/names"}
      models: {$ref: "#/$defs/names"}
      methods:
        description: The settings compared (greedy and temperature methods).
        $ref: "#/$defs/names"
      runs: {description: Runs of every sampled setting., type: integer, minimum: 1, default: 4}
      calibration_bins: {type: integer, minimum: 1, default: 10}
"""
)


class ReliabilityStudy(Study):
    name = "reliability"
    RULES = "rules/reliability.smk"
    SCHEMA = SCHEMA

    def check(self, config: dict[str, Any]) -> list[str]:
        problems = undefined_names(config, self.name, ("tasks", "models", "methods"))
        for name in self.section(config)["methods"]:
            method = config["methods"].get(name)
            if method is not None and sampler_class(method["sampler"]).COMBINES_ANSWERS:
                problems.append(
                    f"studies.reliability.methods: {name!r} is a {method['sampler']} method, "
                    "which combines several answers; the study compares decoding settings "
                    "one run at a time"
                )
        return problems

    def runs(self, config: dict[str, Any]) -> list[Run]:
        """Every setting `runs` times (seeds 0..runs-1); a deterministic one once."""
        study = self.section_if_any(config)
        if study is None:
            return []
        return [
            Run(task, model, method, seed)
            for task in study["tasks"]
            for model in study["models"]
            for method in study["methods"]
            for seed in range(
                1
                if sampler_class(config["methods"][method]["sampler"]).DETERMINISTIC
                else study["runs"]
            )
        ]

    def outputs(self, config: dict[str, Any]) -> list[str]:
        return ["results/tables/reliability.html"]

    def graded_runs(self, config: dict[str, Any], runs: list[Run]) -> list[Run]:
        """The planned runs of the study's tasks, models and settings (its graded shards)."""
        study = self.section_if_any(config)
        if study is None:
            return []
        return [
            run
            for run in runs
            if run.task in study["tasks"]
            and run.model in study["models"]
            and run.method in study["methods"]
        ]
