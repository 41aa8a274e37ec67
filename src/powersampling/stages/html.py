"""The report's HTML pages of the accuracy, reliability and DPS tables, and the cell format
and page they share."""

from __future__ import annotations

import pandas as pd

ACCURACY_STYLE = (
    "<style>table{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
    "th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
    "th{background:#f4f4f4}</style>"
)


def ci_cells(
    table: pd.DataFrame,
    estimate: str,
    *,
    low: str | None = None,
    high: str | None = None,
    signed: bool = False,
) -> list[str]:
    """Each row's ``estimate`` with its interval, ``0.500 [0.400, 0.600]``.

    The bounds are the columns ``low`` and ``high`` (by default ``{estimate}_low`` and
    ``{estimate}_high``); ``signed`` writes every number with its sign (a difference).
    """
    spec = "+.3f" if signed else ".3f"
    lows = table[low or f"{estimate}_low"]
    highs = table[high or f"{estimate}_high"]
    return [
        f"{a:{spec}} [{lo:{spec}}, {hi:{spec}}]"
        for a, lo, hi in zip(table[estimate], lows, highs, strict=True)
    ]


def html_table(shown: pd.DataFrame, *, na_rep: str = "") -> str:
    """A table as the report's pages show it: numbers to three decimals, no index."""
    return shown.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, na_rep=na_rep)


def html_page(title: str, body: str, *, style: str = "") -> str:
    """A standalone HTML page holding ``body``."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{style}"
        f"</head><body>{body}</body></html>\n"
    )


def accuracy_html(accuracy: pd.DataFrame, level: float) -> str:
    """The accuracy table as a small standalone HTML page for the report."""
    shown = accuracy.copy()
    pct = f"{level:.0%}"
    shown[f"accuracy ({pct} CI)"] = ci_cells(shown, "accuracy", low="ci_low", high="ci_high")
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
    # This page has always written a missing value as NaN, the others as an empty cell.
    table = html_table(shown[columns], na_rep="NaN")
    heading = f"<h3>Accuracy by task, model and method ({pct} bootstrap CIs over problems)</h3>"
    return html_page("Accuracy", heading + table, style=ACCURACY_STYLE)


def reliability_html(table: pd.DataFrame) -> str:
    """The reliability summary as the report shows it."""
    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "setting": table["method"],
            "runs": table["n_runs"],
            "accuracy, strict": ci_cells(table, "accuracy_strict"),
            "accuracy, lenient": ci_cells(table, "accuracy_lenient"),
            "compliance": ci_cells(table, "compliance"),
            "accuracy sd across runs": table["accuracy_run_std"],
            "same answer in all runs": table["answer_agreement"],
            "same string in all runs": table["string_agreement"],
            "mean token log p (T=1)": table["logp_t1_mean"],
            "min token log p (T=1)": table["logp_t1_min"],
            "mean token log q (sampled)": table["logq_sampling_mean"],
            "ECE": table["ece"],
        }
    )
    return html_page("Reliability", html_table(shown))


def dps_html(table: pd.DataFrame, level: float, k_max: int) -> str:
    """The comparison table as the report shows it."""
    shown = pd.DataFrame(
        {
            "task": table["task"],
            "model": table["model"],
            "method": table["method"],
            "τ": table["tau"],
            f"accuracy [{level:.0%} CI]": ci_cells(table, "accuracy"),
            "mean k": table["mean_k"],
            "tokens / question": table["tokens_per_question"],
            "time / question (s)": table["time_per_question_s"],
            f"token saving vs k={k_max}": table["token_saving"],
            f"accuracy vs k={k_max}": ci_cells(table, "accuracy_vs_reference", signed=True),
            "agrees with replay": table["agrees_with_replay"],
        }
    )
    return html_page("Dynamic power sampling", html_table(shown))
