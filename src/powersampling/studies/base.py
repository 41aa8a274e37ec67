"""What every study says about itself: the study contract.

A study is an analysis beyond the experiments (LogitLens, patching, DPS, reliability, the
exact toy studies, truncated models). Config validation, run planning and the rules ask the
study; none of them names it. A study owns:

- ``SCHEMA``: the JSON Schema of its config section ``studies.<name>`` (None: the study has
  no section and runs when :meth:`Study.present` says so);
- :meth:`Study.check`: problems of a validated config that a schema cannot see;
- :meth:`Study.runs`: the generation runs it adds to the plan;
- :meth:`Study.model_uses`: what it needs to read inside models (their blocks and norm);
- :meth:`Study.outputs`: the files the workflow's ``all`` target needs from it;
- ``EXPANDS_TRUNCATIONS``: whether its section's ``models`` may name a truncation sweep.

- ``RULES``: the rule file with its rules (the Snakefile includes every study's).

Its figures are entries of :data:`powersampling.plots.FIGURES` with ``study=<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Run:
    """One (task, model, method, seed) combination. Its rows are generated shard by shard,
    together with the other seeds of the same (task, model, method)."""

    task: str
    model: str
    method: str
    seed: int


class Study:
    """A study's side of the contract; every hook has the default of a study that adds
    nothing there."""

    name: ClassVar[str]
    SCHEMA: ClassVar[dict[str, Any] | None] = None
    RULES: ClassVar[str]  # e.g. "rules/dps.smk"
    EXPANDS_TRUNCATIONS: ClassVar[bool] = False

    def present(self, config: dict[str, Any], runs: list[Run]) -> bool:
        """Whether a config whose planned generation runs are ``runs`` runs this study: by
        default, when its section is there."""
        return self.name in config.get("studies", {})

    def section(self, config: dict[str, Any]) -> dict[str, Any]:
        return config["studies"][self.name]

    def section_if_any(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The study's config section, or None when the config has none."""
        return config.get("studies", {}).get(self.name)

    def check(self, config: dict[str, Any]) -> list[str]:
        """Problems of a validated config that uses this study, one line each."""
        return []

    def runs(self, config: dict[str, Any]) -> list[Run]:
        """Generation runs the study adds to the experiments' (none when the config has no
        section for it)."""
        return []

    def model_uses(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        """(model, what) for every model whose insides the study reads (for the check that
        its architecture is one the anatomy knows)."""
        return []

    def outputs(self, config: dict[str, Any]) -> list[str]:
        """Files the workflow's default target needs from this study."""
        return []


def undefined_names(config: dict[str, Any], study: str, kinds: tuple[str, ...]) -> list[str]:
    """Names a study section gives under ``kinds`` (tasks, models, methods) that the config
    does not define."""
    section = config["studies"][study]
    return [
        f"studies.{study}.{kind}: {name!r} is not defined under '{kind}' "
        f"(defined: {', '.join(sorted(config[kind]))})"
        for kind in kinds
        for name in section[kind]
        if name not in config[kind]
    ]


def base_model(config: dict[str, Any], model: str) -> str:
    """The model whose architecture ``model`` has (a truncation's base model)."""
    return config["models"].get(model, {}).get("truncation", {}).get("of", model)


# JSON Schema pieces the study schemas share (the config schema's $defs).
NAMES = {"$ref": "#/$defs/names"}
