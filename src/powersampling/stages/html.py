"""The report's HTML pages of the accuracy, reliability and DPS tables."""

from __future__ import annotations

import pandas as pd


def accuracy_html(accuracy: pd.DataFrame, level: float) -> str:
    """The accuracy table as a small standalone HTML page for the report."""
    shown = accuracy.copy()
    pct = f"{level:.0%}"
    shown[f"accuracy ({pct} CI)"] = [
        f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
        for a, lo, hi in zip(shown["accuracy"], shown["ci_low"], shown["ci_high"], strict=True)
    ]
    columns = [
        c for c in ["task", "model", "method", "sampler", "temperature", "alpha"] if c in shown
    ]
    columns += [f"accuracy ({pct} CI)"]
    columns += [
        c
        for c in [
            "n_problems",
            "n_samples",
            "compliance_rate",
            "extraction_failure_rate",
            "mean_new_tokens",
            "mean_logp",
            "mean_tokens_decoded",
            "mean_steps_correct",
            "mean_blocks",
            "time_per_answer_s",
        ]
        if c in shown
    ]
    table = shown[columns].to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Accuracy</title>"
        "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
        "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "th{background:#f4f4f4}</style></head><body>"
        f"<h3>Accuracy by task, model and method ({pct} bootstrap CIs over problems)</h3>"
        f"{table}</body></html>\n"
    )


def reliability_html(table: pd.DataFrame) -> str:
    """The reliability summary as the report shows it."""

    def ci(name):
        low, high = table[f"{name}_low"], table[f"{name}_high"]
        return [
            f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
            for a, lo, hi in zip(table[name], low, high, strict=True)
        ]

    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "setting": table["method"],
            "runs": table["n_runs"],
            "accuracy, strict": ci("accuracy_strict"),
            "accuracy, lenient": ci("accuracy_lenient"),
            "compliance": ci("compliance"),
            "accuracy sd across runs": table["accuracy_run_std"],
            "same answer in all runs": table["answer_agreement"],
            "same string in all runs": table["string_agreement"],
            "mean token log p (T=1)": table["logp_t1_mean"],
            "min token log p (T=1)": table["logp_t1_min"],
            "mean token log q (sampled)": table["logq_sampling_mean"],
            "ECE": table["ece"],
        }
    )
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, na_rep="")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reliability</title>"
        f"</head><body>{body}</body></html>\n"
    )


def dps_html(table: pd.DataFrame, level: float, k_max: int) -> str:
    """The comparison table as the report shows it."""
    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "method": table["method"],
            "τ": table["tau"],
            f"accuracy [{level:.0%} CI]": [
                f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
                for a, lo, hi in zip(
                    table["accuracy"], table["accuracy_low"], table["accuracy_high"], strict=True
                )
            ],
            "mean k": table["mean_k"],
            "tokens / question": table["tokens_per_question"],
            "time / question (s)": table["time_per_question_s"],
            f"token saving vs k={k_max}": table["token_saving"],
            f"accuracy vs k={k_max}": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                for d, lo, hi in zip(
                    table["accuracy_vs_reference"],
                    table["accuracy_vs_reference_low"],
                    table["accuracy_vs_reference_high"],
                    strict=True,
                )
            ],
            "agrees with replay": table["agrees_with_replay"],
        }
    )
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, na_rep="")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Dynamic power sampling"
        "</title></head><body>"
        f"{body}</body></html>\n"
    )
