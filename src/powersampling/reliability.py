"""How reliable a model is at a decoding setting: accuracy two ways, compliance, run-to-run
consistency, confidence, calibration and a failure taxonomy.

Every number is per (task, model, method) over graded generation rows (several runs = the
method's seeds).

- **Accuracy, strict**: the output is the answer *in the required form* (the task's grader
  says correct and compliant: only the number for instruction prompts, the worked format for
  worked ones). **Lenient**: the last integer anywhere in the output is the answer.
- **Compliance**: the output has the required form (the grader's ``compliant``).
- **Consistency** over runs: the standard deviation of strict accuracy and of compliance
  across runs, and per question whether all runs give the same parsed (lenient) answer and
  the same raw string; shares of questions. One run: not measurable (NaN).
- **Confidence** of an answer: under the model's own distribution at T = 1, the mean token
  log p (``logp_t1_mean``) and the least likely token's log p (``logp_t1_min``); separately,
  under the distribution the tokens were drawn from, the mean token log q
  (``logq_sampling_mean``; 0 for greedy decoding).
- **Calibration**: ECE of the answer's confidence exp(mean token log p at T = 1) against
  strict correctness, over 10 equal-mass bins (sorted by confidence, cut into near-equal
  groups): Σ_b (n_b / N) |mean confidence_b − accuracy_b|.
- **Failures**: each strictly wrong output gets exactly one category, by the first rule of
  :data:`FAILURES` that matches, in that order; rates are per generation (all generations of
  the setting, right ones included), never raw counts, so settings with different numbers of
  runs compare.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from powersampling.stats import bootstrap_ci

# The failure categories, in the order their rules are tried (the first match wins).
FAILURES: dict[str, str] = {
    "empty": "no visible character",
    "truncated": "no EOS before the token cap",
    "repetition": "the same piece of text (2-30 characters, not only digits) four or more "
    "times in a row",
    "refusal": "declines to answer (I can't, I cannot, I'm sorry, as an AI, unable to)",
    "reasoning": "only a number was asked for, and the output works it out (an equation or "
    "an operation between numbers, or several lines)",
    "no_number": "no integer anywhere",
    "extra_text": "an integer, with text around it the required form does not allow",
    "wrong_number": "in the required form, with the wrong number",
}

_INTEGER = re.compile(r"-?\d+")
_REPEAT = re.compile(r"(.{2,30}?)\1{3,}", re.DOTALL)
_REFUSAL = re.compile(
    r"\b(i can(?:no|')t|i am unable|i'm unable|unable to|i'm sorry|i am sorry|as an ai)\b",
    re.IGNORECASE,
)
_WORKING = re.compile(r"\d\s*[-+*/×=]\s*-?\d|=")


def lenient_answer(text: str | None) -> int | None:
    """The last integer anywhere in the output (None: there is none)."""
    found = _INTEGER.findall(text or "")
    return int(found[-1]) if found else None


def failure_category(text: str, finish_reason: str, *, compliant: bool, only_number: bool) -> str:
    """The category of a strictly wrong output (:data:`FAILURES`, first rule that matches).

    ``compliant``: the output has the required form; ``only_number``: the prompt asked for
    the bare number (instruction style), so working it out is a failure of its own.
    """
    stripped = (text or "").strip()
    if not stripped:
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if any(re.search(r"[^\d\s]", m.group(1)) for m in _REPEAT.finditer(stripped)):
        return "repetition"
    if _REFUSAL.search(stripped):
        return "refusal"
    if only_number and (_WORKING.search(stripped) or len(stripped.splitlines()) > 1):
        return "reasoning"
    if not _INTEGER.search(stripped):
        return "no_number"
    if not compliant:
        return "extra_text"
    return "wrong_number"


def equal_mass_ece(confidence, correct, bins: int = 10) -> tuple[float, pd.DataFrame]:
    """ECE over ``bins`` equal-mass bins, and the bins (n, mean confidence, accuracy)."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    keep = ~np.isnan(confidence)
    confidence, correct = confidence[keep], correct[keep]
    if confidence.size == 0:
        return np.nan, pd.DataFrame(columns=["bin", "n", "mean_confidence", "accuracy"])
    order = np.argsort(confidence, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, confidence.size)) if g.size]
    table = pd.DataFrame(
        {
            "bin": np.arange(len(groups)),
            "n": [g.size for g in groups],
            "mean_confidence": [confidence[g].mean() for g in groups],
            "accuracy": [correct[g].mean() for g in groups],
        }
    )
    gaps = (table["mean_confidence"] - table["accuracy"]).abs()
    return float((table["n"] * gaps).sum() / table["n"].sum()), table


def agreement(rows: pd.DataFrame, column: str) -> float:
    """Share of questions on which every run gives the same ``column`` value (NaN with one
    run). Missing values count as a value of their own."""
    runs = rows["seed"].nunique()
    if runs < 2:
        return np.nan
    values = rows[column].astype(object).where(rows[column].notna(), "<none>")
    same = values.groupby(rows["problem_id"]).nunique() == 1
    return float(same.mean())


def annotate(graded: pd.DataFrame, only_number: dict[str, bool]) -> pd.DataFrame:
    """Graded rows with the reliability columns: ``strict``, ``lenient``, ``lenient_answer``,
    ``confidence`` (exp mean token log p at T = 1), the three confidences, and ``failure``
    (None when strictly right). ``only_number``: task → whether its prompt asked for the bare
    number."""
    out = graded.copy()
    n = out["n_new_tokens"].where(out["n_new_tokens"] > 0)
    answers = [lenient_answer(t) for t in out["completion"]]
    out["lenient_answer"] = pd.array(answers, dtype="Int64")
    references = pd.to_numeric(out["reference"], errors="coerce")
    out["lenient"] = (out["lenient_answer"] == references).fillna(False).astype(bool)
    out["strict"] = (out["correct"].fillna(False) & out["compliant"].fillna(False)).astype(bool)
    out["logp_t1_mean"] = out["logp_sum"] / n
    out["logp_t1_min"] = out["min_token_logp"]
    out["logq_sampling_mean"] = out["sampled_logq_sum"] / n
    out["confidence"] = np.exp(out["logp_t1_mean"])
    out["failure"] = [
        None
        if right
        else failure_category(
            text, reason, compliant=bool(compliant), only_number=only_number.get(task, False)
        )
        for right, text, reason, compliant, task in zip(
            out["strict"],
            out["completion"],
            out["finish_reason"],
            out["compliant"].fillna(False),
            out["task"],
            strict=True,
        )
    ]
    return out


GROUP = ["task", "model", "method"]


def reliability_tables(
    rows: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0, bins: int = 10
) -> dict[str, pd.DataFrame]:
    """From :func:`annotate`'d rows: the summary (``reliability``), the calibration bins
    (``reliability_bins``) and the failure rates (``failures``)."""
    summary, calibration, failures = [], [], []
    for (task, model, method), g in rows.groupby(GROUP, sort=True):
        where = {"task": task, "model": model, "method": method}
        problems = g["problem_id"].astype(str).to_numpy()

        def ci(values, name, problems=problems):
            est, low, high = bootstrap_ci(
                np.asarray(values, dtype=float), problems, n_boot=n_boot, level=level, seed=seed
            )
            return {name: est, f"{name}_low": low, f"{name}_high": high}

        per_run = g.groupby("seed")
        ece, bins_table = equal_mass_ece(g["confidence"], g["strict"], bins)
        summary.append(
            {
                **where,
                "temperature": float(g["temperature"].iloc[0]),
                "n_runs": g["seed"].nunique(),
                "n_generations": len(g),
                **ci(g["strict"], "accuracy_strict"),
                **ci(g["lenient"], "accuracy_lenient"),
                **ci(g["compliant"].fillna(False), "compliance"),
                "accuracy_run_std": _std(per_run["strict"].mean()),
                "compliance_run_std": _std(per_run["compliant"].mean()),
                "answer_agreement": agreement(g, "lenient_answer"),
                "string_agreement": agreement(g, "completion"),
                **ci(g["logp_t1_mean"].fillna(g["logp_t1_mean"].min()), "logp_t1_mean"),
                **ci(g["logp_t1_min"].fillna(g["logp_t1_min"].min()), "logp_t1_min"),
                "logq_sampling_mean": float(g["logq_sampling_mean"].mean()),
                "ece": ece,
            }
        )
        calibration.append(bins_table.assign(**where))
        counts = g["failure"].value_counts()
        failures.append(
            pd.DataFrame(
                {
                    **where,
                    "category": list(FAILURES),
                    "n": [int(counts.get(c, 0)) for c in FAILURES],
                    "rate": [counts.get(c, 0) / len(g) for c in FAILURES],
                }
            )
        )
    empty = pd.DataFrame()
    return {
        "reliability": pd.DataFrame(summary),
        "reliability_bins": pd.concat(calibration, ignore_index=True) if calibration else empty,
        "failures": pd.concat(failures, ignore_index=True) if failures else empty,
    }


def _std(values: pd.Series) -> float:
    """Standard deviation across runs (ddof 1); NaN with one run."""
    return float(values.std(ddof=1)) if len(values) > 1 else np.nan
