"""Dynamic power sampling (DPS): as many power-sampled trajectories per question as it needs.

Power sampling a question with k independent trajectories and taking their majority answer
costs k full MCMC runs. DPS starts at ``k_start`` trajectories and adds ``k_step`` at a
time, up to ``k_max``, while a trained controller predicts that the trajectories so far are
not enough: ``1 - p̂_enough(k) > τ``.

The pieces, in the order the workflow runs them:

- :mod:`~powersampling.dps.votes`: answer keys and the majority vote (with its tie rule);
- :mod:`~powersampling.dps.trajectories`: the pool of ``k_max`` trajectories per question
  (the seeds of a power method), the ``enough(k)`` labels, and the features a controller
  sees at decision time k (from the first k trajectories only);
- :mod:`~powersampling.dps.embeddings`: a question's hidden-state summary (MLP-HQ);
- :mod:`~powersampling.dps.controllers`: GBDT, MLP-H and MLP-HQ (scikit-learn), their
  training with cross-validation grouped by question, and their files;
- :mod:`~powersampling.dps.policy`: the stopping rules (DPS, fixed k, Early-Stopping
  Self-Consistency, Adaptive-Consistency, the oracle) replayed on the pool, and their tables;
- :mod:`powersampling.samplers.dps`: the ``dps`` sampler, which runs the policy for real.
"""

# The controllers a config may name (their definitions: powersampling.dps.controllers).
CONTROLLER_NAMES = ("gbdt", "mlp_h", "mlp_hq")


def controller_file(task: str, model: str, controller: str) -> str:
    """Where the workflow keeps a trained controller (rule train_controller)."""
    return f"results/dps/{task}/{model}/controllers/{controller}.pkl"


def embeddings_file(task: str, model: str) -> str:
    """Where the workflow keeps the question embeddings of MLP-HQ (rule question_embeddings)."""
    return f"results/dps/{task}/{model}/question_embeddings.parquet"
