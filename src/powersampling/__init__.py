"""Power-sampling experiments on LLM reasoning.

The library behind the Snakemake workflow: toy world, model loading, a batched
KV-cached decoding engine, samplers, tasks and graders, statistics and plots.
It never imports Snakemake; the workflow's scripts are thin wrappers around it.
"""

__version__ = "0.1.0"
