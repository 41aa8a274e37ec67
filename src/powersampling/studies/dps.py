"""Dynamic power sampling: a pool of power-sampled trajectories per question, controllers
that learn when k are enough, and every stopping rule replayed on held-out questions.

Rules: rules/dps.smk; library: :mod:`powersampling.dps`; the ``dps`` sampler
(:mod:`powersampling.samplers.dps`) runs the policy for real; figures: ``study="dps"``.
"""

from __future__ import annotations

from typing import Any

import yaml

from powersampling.dps import controller_file, embeddings_file
from powersampling.samplers.dps import check_pool
from powersampling.studies.base import Run, Study, base_model, undefined_names

SCHEMA = yaml.safe_load(
    """
    description: >
      Dynamic power sampling. The pool: k_max trajectories per question, the seeds
      0..k_max-1 of the power method `pool` (added to the runs). The questions are split
      into training and held-out ones; controllers (gbdt, mlp_h, mlp_hq) learn from the
      training questions when k trajectories are enough, and every stopping rule (the
      controllers over a sweep of tau, fixed k, Early-Stopping Self-Consistency,
      Adaptive-Consistency, the oracle) is replayed on the held-out questions. A method
      `{sampler: dps, controller: NAME, tau: T}` runs the policy for real on the
      held-out questions.
    type: object
    additionalProperties: false
    required: [tasks, models, pool]
    properties:
      tasks: {$ref: "#/$defs/names"}
      models: {$ref: "#/$defs/names"}
      pool:
        description: A power-sampling method; its seeds 0..k_max-1 are the trajectories.
        type: string
      k_start:
        description: Trajectories before the first decision.
        type: integer
        minimum: 1
        default: 2
      k_step: {description: Trajectories added at a time., type: integer, minimum: 1, default: 2}
      k_max: {description: Most trajectories per question., type: integer, minimum: 2, default: 8}
      train_share:
        description: Share of each task's questions the controllers learn from (by question).
        type: number
        exclusiveMinimum: 0
        exclusiveMaximum: 1
        default: 0.5
      controllers:
        type: array
        minItems: 1
        uniqueItems: true
        items: {enum: [gbdt, mlp_h, mlp_hq]}
        default: [gbdt, mlp_h, mlp_hq]
      embedding_layer:
        description: >-
          Decoder block (0-based) whose residual stream, averaged over the prompt, is a
          question's embedding (mlp_hq); null: the middle block.
        type: [integer, "null"]
        minimum: 0
        default: null
      embedding_components:
        description: PCA components of the question embedding that mlp_hq reads.
        type: integer
        minimum: 1
        default: 8
      cv_folds:
        description: Cross-validation folds (grouped by question) that choose hyperparameters.
        type: integer
        minimum: 2
        default: 5
      taus:
        description: The tau sweep of every controller in the replay.
        type: array
        minItems: 1
        items: {type: number, minimum: 0, maximum: 1}
        default: [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
      esc_window:
        description: Early-Stopping Self-Consistency stops when this many last trajectories agree.
        type: integer
        minimum: 1
        default: 2
      ac_threshold:
        description: Adaptive-Consistency stops when P(leader is the majority) reaches this.
        type: number
        exclusiveMinimum: 0
        exclusiveMaximum: 1
        default: 0.95
      embedding_batch_size:
        description: Prompts per forward pass when embedding questions.
        type: integer
        minimum: 1
        default: 16
"""
)


class DpsStudy(Study):
    name = "dps"
    RULES = "rules/dps.smk"
    SCHEMA = SCHEMA

    def check(self, config: dict[str, Any]) -> list[str]:
        study = self.section(config)
        problems = undefined_names(config, self.name, ("tasks", "models"))
        problems += check_pool("studies.dps.pool", study["pool"], config["methods"])
        k_start, k_step, k_max = study["k_start"], study["k_step"], study["k_max"]
        if not k_start < k_max or (k_max - k_start) % k_step:
            problems.append(
                f"studies.dps: k_start {k_start} must be below k_max {k_max}, which k_step "
                f"{k_step} must reach from it"
            )
        return problems

    def runs(self, config: dict[str, Any]) -> list[Run]:
        """The pool: seeds 0..k_max-1 of its power method are the trajectories."""
        study = self.section_if_any(config)
        if study is None:
            return []
        return [
            Run(task, model, study["pool"], seed)
            for task in study["tasks"]
            for model in study["models"]
            for seed in range(study["k_max"])
        ]

    def model_uses(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        study = self.section(config)
        if "mlp_hq" not in study["controllers"]:
            return []
        return [(base_model(config, m), "question embeddings (mlp_hq)") for m in study["models"]]

    def outputs(self, config: dict[str, Any]) -> list[str]:
        return ["results/tables/dps.html"]

    # ------------------------------------------------------------ the rules' inputs

    def pairs(self, config: dict[str, Any]) -> list[tuple[str, str]]:
        """(task, model) of the study: one pool, set of controllers and replay each."""
        study = self.section_if_any(config)
        if study is None:
            return []
        return [(task, model) for task in study["tasks"] for model in study["models"]]

    def pool_runs(self, config: dict[str, Any], task: str, model: str) -> list[Run]:
        """The pool's runs on one task and model (its graded shards are the pool)."""
        study = self.section(config)
        return [Run(task, model, study["pool"], s) for s in range(study["k_max"])]

    def embeddings_input(
        self, config: dict[str, Any], task: str, model: str, controller: str | None = None
    ) -> dict[str, str]:
        """The question embeddings, for whatever reads them: mlp_hq (or, with no controller
        named, the evaluation of a study that trains mlp_hq)."""
        study = self.section(config)
        needed = controller == "mlp_hq" if controller else "mlp_hq" in study["controllers"]
        return {"embeddings": embeddings_file(task, model)} if needed else {}

    def controller_files(self, config: dict[str, Any], task: str, model: str) -> dict[str, str]:
        return {
            name: controller_file(task, model, name) for name in self.section(config)["controllers"]
        }

    def evaluation_files(self, task: str, model: str) -> dict[str, str]:
        folder = f"results/dps/{task}/{model}/evaluation"
        return {
            name: f"{folder}/{name}.parquet"
            for name in ("replay", "summary", "quality", "calibration", "importance")
        }

    def online_runs(self, config: dict[str, Any], runs: list[Run]) -> list[Run]:
        """The runs of dps methods (they answer the held-out questions for real)."""
        return [run for run in runs if config["methods"][run.method]["sampler"] == self.name]

    def online_taus(
        self, config: dict[str, Any], runs: list[Run], task: str, model: str
    ) -> dict[str, list[float]]:
        """Per controller, the tau of the dps methods that run on this task and model: the
        replay adds them to its sweep, to compare the real runs with it."""
        taus: dict[str, list[float]] = {}
        for run in self.online_runs(config, runs):
            if (run.task, run.model) == (task, model):
                method = config["methods"][run.method]
                taus.setdefault(method["controller"], []).append(method["tau"])
        return taus
