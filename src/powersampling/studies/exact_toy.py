"""Exact studies of power sampling on a random tiny model whose answers can all be enumerated.

Rule: ``toy_study`` (rules/studies.smk), one job per entry of
:data:`powersampling.toy.studies.STUDIES`, each with its table and figure.
"""

from __future__ import annotations

from typing import Any

import yaml

from powersampling.studies.base import Study

SCHEMA = yaml.safe_load(
    """
    description: >
      Exact studies of power sampling on a random tiny model whose answers can all be
      enumerated: log-probability gaps under power vs temperature, convergence of the
      sampler to pi_alpha, the likelihood of the answers greedy and power sampling find,
      and the compute frontier (TV to pi_alpha against tokens decoded per answer) of MH
      power sampling, Sequential Monte Carlo and temperature 1/alpha.
    type: object
    additionalProperties: false
    properties:
      vocab_size: {type: integer, minimum: 2, maximum: 8, default: 3}
      cap: {type: integer, minimum: 1, maximum: 6, default: 4}
      alphas:
        type: array
        minItems: 1
        items: {type: number, exclusiveMinimum: 0}
        default: [2.0, 4.0]
      block_sizes:
        type: array
        minItems: 1
        items: {type: integer, minimum: 1}
        default: [1, 2, 4]
      mcmc_steps:
        type: array
        minItems: 1
        items: {type: integer, minimum: 0}
        default: [0, 1, 2, 4, 8, 16, 32]
      prompts: {type: integer, minimum: 1, default: 4}
      init_std: {type: number, exclusiveMinimum: 0, default: 0.25}
      smc_particles:
        description: Particle counts N of the SMC sampler in the frontier study.
        type: array
        minItems: 1
        uniqueItems: true
        items: {type: integer, minimum: 1}
        default: [1, 2, 4, 8, 16, 32, 64]
      smc_ess_thresholds:
        description: >-
          ESS thresholds kappa of the SMC sampler in the frontier study (resample when
          the effective sample size falls below kappa times N; one line each).
        type: array
        minItems: 1
        uniqueItems: true
        items: {type: number, minimum: 0, maximum: 1}
        default: [0.5, 1.0]
      smc_runs:
        description: >-
          Independent SMC runs per (N, kappa) in the frontier study; the mean of their
          weighted particle distributions estimates SMC's output law.
        type: integer
        minimum: 2
        default: 1000
"""
)


class ExactToyStudy(Study):
    name = "exact_toy"
    RULES = "rules/studies.smk"
    SCHEMA = SCHEMA

    def outputs(self, config: dict[str, Any]) -> list[str]:
        from powersampling.toy.studies import STUDIES

        return [f"results/plots/study_{study}.svg" for study in STUDIES]
