"""Studies: analyses beyond the experiments, each one module behind one contract.

A config runs a study when :meth:`~powersampling.studies.base.Study.present` says so
(usually: its section ``studies.<name>`` is there). Config validation, run planning and the
rules loop over :data:`STUDIES` and name none of them.

A new study is one module with a :class:`~powersampling.studies.base.Study` subclass, one
``rules/<study>.smk`` file (included by the Snakefile) and one line in :data:`STUDIES`.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

from powersampling.studies.base import Run, Study

__all__ = [
    "STUDIES",
    "Run",
    "Study",
    "active_studies",
    "all_studies",
    "get_study",
    "planned_runs",
    "study_rule_files",
    "study_schemas",
]

# name → "module:Class"; a study's module loads only when asked for.
STUDIES: dict[str, str] = {
    # No config section: present when a truncated model runs.
    "truncation": "powersampling.studies.truncation:TruncationStudy",
    "exact_toy": "powersampling.studies.exact_toy:ExactToyStudy",
    "logit_lens": "powersampling.studies.logit_lens:LogitLensStudy",
    "patching": "powersampling.studies.patching:PatchingStudy",
    "reliability": "powersampling.studies.reliability:ReliabilityStudy",
    "dps": "powersampling.studies.dps:DpsStudy",
}


def get_study(name: str) -> Study:
    module_name, class_name = STUDIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def all_studies() -> list[Study]:
    return [get_study(name) for name in STUDIES]


def planned_runs(config: dict[str, Any]) -> list[Run]:
    """Every run the experiments ask for, and those the studies add, without duplicates,
    in config order."""
    runs: dict[Run, None] = {}
    for experiment in config["experiments"]:
        for task in experiment["tasks"]:
            for model in experiment["models"]:
                for method in experiment["methods"]:
                    for seed in experiment["seeds"]:
                        runs[Run(task, model, method, int(seed))] = None
    for study in all_studies():
        runs.update(dict.fromkeys(study.runs(config)))
    return list(runs)


def active_studies(config: dict[str, Any], runs: list[Run] | None = None) -> list[Study]:
    """The studies a validated config runs, in registry order (``runs``: its planned runs,
    computed when not given)."""
    runs = planned_runs(config) if runs is None else runs
    return [study for study in all_studies() if study.present(config, runs)]


def study_rule_files() -> list[str]:
    """The rule files of every registered study (a file may serve several), in order."""
    return list(dict.fromkeys(study.RULES for study in all_studies()))


def study_schemas() -> dict[str, Any]:
    """The schema of the config's ``studies`` section, from the studies' own schemas."""
    return {
        name: copy.deepcopy(study.SCHEMA)
        for name, study in zip(STUDIES, all_studies(), strict=True)
        if study.SCHEMA is not None
    }
