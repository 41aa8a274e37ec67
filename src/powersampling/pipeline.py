"""The workflow's stage functions, which now live in :mod:`powersampling.stages`."""

from powersampling.stages.data import download_dataset, synthetic_data, task_with_data
from powersampling.stages.dps import (
    collect_dps,
    dps_pool,
    evaluate_dps,
    question_embeddings,
    train_controller,
)
from powersampling.stages.generate import generate
from powersampling.stages.grade import grade, grade_frame
from powersampling.stages.html import accuracy_html, dps_html, reliability_html
from powersampling.stages.interp import (
    collect_logit_lens,
    collect_patching,
    collect_truncation,
    logit_lens_shard,
    patching_shard,
)
from powersampling.stages.metrics import collect_metrics, export_alpaca_eval, judge_alpaca_eval
from powersampling.stages.models import build_rehearsal_model, download_model, train_toy_model
from powersampling.stages.plots import plot
from powersampling.stages.reliability import collect_reliability
from powersampling.stages.studies import toy_study

__all__ = [
    "accuracy_html",
    "build_rehearsal_model",
    "collect_dps",
    "collect_logit_lens",
    "collect_metrics",
    "collect_patching",
    "collect_reliability",
    "collect_truncation",
    "download_dataset",
    "download_model",
    "dps_html",
    "dps_pool",
    "evaluate_dps",
    "export_alpaca_eval",
    "generate",
    "grade",
    "grade_frame",
    "judge_alpaca_eval",
    "logit_lens_shard",
    "patching_shard",
    "plot",
    "question_embeddings",
    "reliability_html",
    "synthetic_data",
    "task_with_data",
    "toy_study",
    "train_controller",
    "train_toy_model",
]
