"""Truncated models: accuracy against the blocks kept, beside the LogitLens of the full model.

Truncated models are models of the experiments (config key ``truncate``); the study has no
section of its own and runs when a planned run uses a truncated model. Rule:
``collect_truncation`` (rules/interp.smk); figures: ``study="truncation"``.
"""

from __future__ import annotations

from typing import Any

from powersampling.studies.base import Run, Study


class TruncationStudy(Study):
    name = "truncation"
    RULES = "rules/interp.smk"

    def present(self, config: dict[str, Any], runs: list[Run]) -> bool:
        return any("truncation" in config["models"][run.model] for run in runs)

    def model_uses(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            (model["truncation"]["of"], "truncation")
            for model in config["models"].values()
            if "truncation" in model
        ]
