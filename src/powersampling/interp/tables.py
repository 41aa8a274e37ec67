"""Report tables of the analyses inside the model: LogitLens, truncated models, patching.

Pure pandas: each function takes the concatenated per-shard frames of one analysis (or the
accuracy table and the config's models) and returns the tidy tables that the figures and
the report read. Every bootstrap interval is seeded by
:func:`powersampling.seeding.derive_seed` from the base seed and the names of its group, so a
group's interval does not depend on which other groups are in the table. An empty input
gives empty tables with their columns, so a report still renders without those results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from powersampling.errors import UserError
from powersampling.seeding import derive_seed
from powersampling.stats import bootstrap_ci

# What LogitLens measures per layer (columns of powersampling.interp.logit_lens's rows).
LENS_METRICS = ["kl", "top1_agree", "entropy"]

POSITIONS = ("last_prompt", "answer")  # the position kinds of LogitLens rows


def _ci_columns(*names: str) -> list[str]:
    return [f"{n}{suffix}" for n in names for suffix in ("", "_ci_low", "_ci_high")]


LENS_COLUMNS = [
    "task",
    "model",
    "layer",
    "n_layers",
    "position",
    "n_problems",
    *_ci_columns(*LENS_METRICS),
]
TRUNCATION_COLUMNS = [
    "task",
    "base_model",
    "model",
    "method",
    "layers_kept",
    "keep_last",
    "n_blocks",
    "is_full",
    "accuracy",
    "ci_low",
    "ci_high",
    "n_problems",
]
# LogitLens metrics beside truncations, by short name: kl_last_prompt, top1_answer, ...
_LENS_SHORT = {"kl": "kl", "top1_agree": "top1"}
LENS_VS_TRUNCATION_COLUMNS = [
    "task",
    "base_model",
    "method",
    "layers_kept",
    "keep_last",
    "n_blocks",
    "model",
    "accuracy",
    "ci_low",
    "ci_high",
    "full_accuracy",
    "full_ci_low",
    "full_ci_high",
    "lens_layer",
    "n_layers",
    *_ci_columns(*(f"{short}_{pos}" for short in _LENS_SHORT.values() for pos in POSITIONS)),
]
PATCHING_HEATMAP_COLUMNS = [
    "task",
    "model",
    "layer",
    "n_layers",
    "offset",
    "effect",
    "kl",
    "n_pairs",
    "n_nan_effect",
]
PATCHING_BY_LAYER_COLUMNS = [
    "task",
    "model",
    "layer",
    "n_layers",
    "n_pairs",
    "n_nan_effect",
    *_ci_columns("changed_effect", "max_effect", "changed_kl"),
]
PATCHING_PAIRS_COLUMNS = ["task", "model", "reason", "n"]


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    """Refuse a frame that is not a DataFrame, or a non-empty one that lacks a column
    (an empty frame may come without columns: a study with no results yet)."""
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{what} needs a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing and not frame.empty:
        raise UserError(f"{what}: the frame lacks the column(s) {missing}")


def _mean_ci(values: pd.Series, *, n_boot: int, level: float, seed: int) -> dict[str, float]:
    """Mean and percentile-bootstrap CI of the finite values (NaN: nothing to average)."""
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    mean, low, high = bootstrap_ci(finite, n_boot=n_boot, level=level, seed=seed)
    return {"": mean, "_ci_low": low, "_ci_high": high}


# --------------------------------------------------------------------------------------
# LogitLens


def lens_table(
    frame: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """LogitLens per (task, model, layer, position kind): mean KL(p_final ‖ p_layer), top-1
    agreement and entropy over problems, each with a percentile-bootstrap CI.

    ``frame`` is the LogitLens jobs' rows (one per problem × layer × position kind; see
    :func:`powersampling.stages.interp.logit_lens_shard`). The means and intervals are those of
    :func:`powersampling.interp.logit_lens.lens_summary`, run per (task, model) with the
    seed ``derive_seed(seed, task, model)``. Columns: :data:`LENS_COLUMNS`, i.e. ``task``,
    ``model``, ``layer``, ``n_layers``, ``position``, ``n_problems`` and for each of ``kl``,
    ``top1_agree``, ``entropy`` the mean with ``<metric>_ci_low`` and ``<metric>_ci_high``.
    """
    _require(frame, ["task", "model", "layer", "n_layers", "position", *LENS_METRICS], "lens_table")
    if frame.empty:
        return _empty(LENS_COLUMNS)
    parts = []
    for (task, model), group in frame.groupby(["task", "model"], sort=True):
        summary = lens_summary(
            group, level=level, n_boot=n_boot, seed=derive_seed(seed, task, model)
        )
        parts.append(summary.assign(task=task, model=model))
    out = pd.concat(parts, ignore_index=True).rename(columns={"n_sequences": "n_problems"})
    return out[LENS_COLUMNS]


# --------------------------------------------------------------------------------------
# Truncated models


def _base_depths(truncations: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Decoder blocks of each truncated base model, where a truncation entry knows it."""
    depths: dict[str, int] = {}
    for spec in truncations.values():
        if spec.get("depth") is not None:
            depths.setdefault(spec["of"], int(spec["depth"]))
    return depths


def _blocks_run(spec: Mapping[str, Any]) -> int:
    """Blocks a truncated model runs: its kept blocks, or, when the depth was unknown at
    validation, L plus the last block (a valid truncation never keeps every block, so the
    last block is never among the first L)."""
    if spec.get("kept") is not None:
        return len(spec["kept"])
    return int(spec["layers"]) + int(bool(spec["keep_last"]))


def truncation_table(
    accuracy: pd.DataFrame, models: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """Accuracy of every truncated model beside the full model it truncates.

    ``accuracy`` is :func:`powersampling.metrics.accuracy_table`; ``models`` the validated
    config's models, where a truncated model's entry has a ``truncation`` section (``of``,
    ``layers``, ``keep_last``, ``kept``, ``depth``). Every accuracy row of a truncated
    model is kept, and the full model's row of the same task and method is added when the
    table has it. Columns: :data:`TRUNCATION_COLUMNS`:

    - ``base_model``: the full model (itself on its own row);
    - ``layers_kept``: L of a truncation, the full model's depth on its row (NA when the
      depth is unknown), so that both lie on one axis;
    - ``keep_last``: whether the truncation also runs the last block (NA on the full model's
      row, which is no truncation);
    - ``n_blocks``: decoder blocks actually run (L, or L + 1 with the last block; the depth
      for the full model);
    - ``is_full``, and ``accuracy``, ``ci_low``, ``ci_high``, ``n_problems`` as in the
      accuracy table.

    Empty (with these columns) when no truncated model has results.
    """
    columns = ["task", "model", "method", "accuracy", "ci_low", "ci_high", "n_problems"]
    _require(accuracy, columns, "truncation_table")
    truncations = {name: e["truncation"] for name, e in models.items() if e.get("truncation")}
    if accuracy.empty or not truncations:
        return _empty(TRUNCATION_COLUMNS)
    depths = _base_depths(truncations)
    records, bases = [], set()
    for row in accuracy[accuracy["model"].isin(list(truncations))].to_dict("records"):
        spec = truncations[row["model"]]
        bases.add((row["task"], spec["of"], row["method"]))
        records.append(
            row
            | {
                "base_model": spec["of"],
                "layers_kept": int(spec["layers"]),
                "keep_last": bool(spec["keep_last"]),
                "n_blocks": _blocks_run(spec),
                "is_full": False,
            }
        )
    for row in accuracy.to_dict("records"):
        if (row["task"], row["model"], row["method"]) in bases:
            depth = depths.get(row["model"], pd.NA)
            records.append(
                row
                | {
                    "base_model": row["model"],
                    "layers_kept": depth,
                    "keep_last": pd.NA,
                    "n_blocks": depth,
                    "is_full": True,
                }
            )
    if not records:
        return _empty(TRUNCATION_COLUMNS)
    out = pd.DataFrame(records, columns=TRUNCATION_COLUMNS).astype(
        {"layers_kept": "Int64", "n_blocks": "Int64", "keep_last": "boolean", "is_full": bool}
    )
    return out.sort_values(
        ["task", "base_model", "method", "layers_kept", "model"], ignore_index=True
    )


def _lens_wide(lens: pd.DataFrame) -> pd.DataFrame:
    """LogitLens KL and top-1 agreement (with CIs) per (task, model, layer), one column per
    position kind: kl_last_prompt, kl_last_prompt_ci_low, ..., top1_answer_ci_high."""
    values = _ci_columns(*_LENS_SHORT)
    wide = lens.set_index(["task", "model", "layer", "n_layers", "position"])[values].unstack(
        "position"
    )
    names = {}
    for metric, short in _LENS_SHORT.items():
        for suffix in ("", "_ci_low", "_ci_high"):
            for position in POSITIONS:
                names[(f"{metric}{suffix}", position)] = f"{short}_{position}{suffix}"
    wide = wide.reindex(columns=list(names))  # a position kind with no rows gives NaN
    wide.columns = list(names.values())
    return wide.reset_index(["n_layers"]).reset_index()


def lens_vs_truncation(truncation: pd.DataFrame, lens: pd.DataFrame) -> pd.DataFrame:
    """Each truncated model's accuracy beside its full model's LogitLens at the block where
    the truncation stops: does a model that stops after block L-1 fail where the lens says
    the residual stream is still far from the answer?

    ``truncation`` is :func:`truncation_table`, ``lens`` is :func:`lens_table`. One row per
    truncation (task, base model, method, L, keep_last), with the truncated model's
    accuracy and CI, the full model's (``full_*``, NaN when it was not run), and the base
    model's LogitLens on the same task at ``lens_layer`` = L - 1: ``kl_last_prompt``,
    ``kl_answer``, ``top1_last_prompt``, ``top1_answer``, each with ``_ci_low`` and
    ``_ci_high``. A truncation whose base model has no lens row at that layer is left out;
    empty when either table is. Columns: :data:`LENS_VS_TRUNCATION_COLUMNS`.
    """
    _require(truncation, TRUNCATION_COLUMNS, "lens_vs_truncation (truncation table)")
    _require(lens, LENS_COLUMNS, "lens_vs_truncation (lens table)")
    if truncation.empty or lens.empty:
        return _empty(LENS_VS_TRUNCATION_COLUMNS)
    is_full = truncation["is_full"].astype(bool)
    truncated = truncation[~is_full].drop(columns=["is_full", "n_problems"])
    truncated = truncated.assign(lens_layer=truncated["layers_kept"].astype(int) - 1)
    full = truncation[is_full][["task", "base_model", "method", "accuracy", "ci_low", "ci_high"]]
    full = full.rename(columns={c: f"full_{c}" for c in ["accuracy", "ci_low", "ci_high"]})
    wide = _lens_wide(lens).rename(columns={"model": "base_model", "layer": "lens_layer"})
    out = truncated.merge(wide, on=["task", "base_model", "lens_layer"], how="inner")
    out = out.merge(full, on=["task", "base_model", "method"], how="left")
    if out.empty:
        return _empty(LENS_VS_TRUNCATION_COLUMNS)
    out = out.sort_values(["task", "base_model", "method", "keep_last", "layers_kept"])
    return out[LENS_VS_TRUNCATION_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Activation patching

PATCHING_REQUIRED = [
    "task",
    "model",
    "pair_id",
    "layer",
    "n_layers",
    "position",
    "token",
    "corrupted_token",
    "kl",
    "effect",
]
PAIR = ["task", "model", "pair_id"]


def _with_offsets(frame: pd.DataFrame) -> pd.DataFrame:
    """``offset`` = position - (P - 1) for each pair's P prompt positions: 0 is the answer
    position, -1 the token before it. Pairs' prompts differ in length, so only positions
    counted back from the answer line up across pairs."""
    last = frame.groupby(PAIR, sort=False)["position"].transform("max")
    return frame.assign(offset=(frame["position"] - last).astype(int))


def _heatmap(frame: pd.DataFrame, max_offset: int) -> pd.DataFrame:
    near = frame[frame["offset"] >= -max_offset].assign(nan_effect=frame["effect"].isna())
    out = near.groupby(["task", "model", "layer", "offset"], sort=True).agg(
        n_layers=("n_layers", "first"),
        effect=("effect", "mean"),  # NaN effects (0/0) are skipped, and counted below
        kl=("kl", "mean"),
        n_pairs=("pair_id", "nunique"),
        n_nan_effect=("nan_effect", "sum"),
    )
    return out.reset_index()[PATCHING_HEATMAP_COLUMNS]


def _per_pair(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (pair, layer): the effect and KL at the changed position(s) (averaged when a
    change spans several tokens), the largest effect over positions, and whether every
    effect is NaN (the clean and corrupted runs have the same logit difference)."""
    keys = [*PAIR, "layer"]
    frame = frame.assign(nan_effect=frame["effect"].isna())
    per_pair = frame.groupby(keys, sort=True).agg(
        n_layers=("n_layers", "first"),
        max_effect=("effect", "max"),
        nan_effect=("nan_effect", "all"),
    )
    changed = frame[frame["token"] != frame["corrupted_token"]]
    at_change = changed.groupby(keys, sort=True).agg(
        changed_effect=("effect", "mean"), changed_kl=("kl", "mean")
    )
    return per_pair.join(at_change).reset_index()  # no changed position: NaN


def _by_layer(per_pair: pd.DataFrame, *, n_boot: int, level: float, seed: int) -> pd.DataFrame:
    records = []
    for (task, model, layer), pairs in per_pair.groupby(["task", "model", "layer"], sort=True):
        record = {
            "task": task,
            "model": model,
            "layer": layer,
            "n_layers": pairs["n_layers"].iloc[0],
            "n_pairs": len(pairs),
            "n_nan_effect": int(pairs["nan_effect"].sum()),
        }
        for metric in ("changed_effect", "max_effect", "changed_kl"):
            ci = _mean_ci(
                pairs[metric],
                n_boot=n_boot,
                level=level,
                seed=derive_seed(seed, task, model, layer, metric),
            )
            record |= {f"{metric}{suffix}": value for suffix, value in ci.items()}
        records.append(record)
    return pd.DataFrame.from_records(records, columns=PATCHING_BY_LAYER_COLUMNS)


def _pair_counts(counts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for entry in counts:
        if "task" not in entry or "model" not in entry:
            raise UserError(f"patching pair counts need a task and a model: got {dict(entry)}")
        reasons = totals.setdefault((str(entry["task"]), str(entry["model"])), {})
        for reason, n in entry.items():
            if reason in ("task", "model"):
                continue
            if isinstance(n, bool) or not isinstance(n, int | np.integer):
                raise UserError(f"patching pair count {reason!r} must be an integer, got {n!r}")
            reasons[reason] = reasons.get(reason, 0) + int(n)
    records = [
        (task, model, reason, n)
        for (task, model), reasons in sorted(totals.items())
        for reason, n in reasons.items()
    ]
    return pd.DataFrame.from_records(records, columns=PATCHING_PAIRS_COLUMNS).astype({"n": int})


def patching_tables(
    frame: pd.DataFrame,
    counts: Sequence[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    max_offset: int = 48,
) -> dict[str, pd.DataFrame]:
    """The activation-patching tables: where patching the clean run in restores its answer.

    ``frame`` is the patching jobs' rows (one per pair × layer × prompt position; see
    :func:`powersampling.interp.patching.patch_pairs`, plus ``task`` and ``model``);
    ``effect`` is normalised so that the corrupted run is 0 and the clean run 1, and is NaN
    for a pair whose two runs have the same logit difference. ``counts`` are dicts with
    ``task``, ``model`` and integer counts by reason (the jobs' per-shard counts, e.g.
    ``pairs``, ``different_lengths``, ``same_first_answer_token``, ``used``, and the
    task's own counts of dropped pairs, given once per task and model); they are summed.

    Returns:

    - ``patching_heatmap`` (:data:`PATCHING_HEATMAP_COLUMNS`): per (task, model, layer,
      offset) the mean ``effect`` and ``kl`` over pairs, where ``offset`` = position - (P - 1)
      aligns prompts of different lengths P on their answer position (0; the tokens before
      it are negative), for offsets >= -``max_offset``; ``n_pairs`` pairs in the cell, of
      which ``n_nan_effect`` have a NaN effect (left out of the mean effect).
    - ``patching_by_layer`` (:data:`PATCHING_BY_LAYER_COLUMNS`): per (task, model, layer),
      over pairs, with percentile-bootstrap CIs (seed ``derive_seed(seed, task, model,
      layer, metric)``): ``changed_effect``, the effect of patching the changed number's
      position (the mean over its positions when it spans several tokens); ``max_effect``,
      each pair's largest effect over all positions; ``changed_kl``, the KL at the changed
      position. Pairs with NaN effects are left out of the effect means and counted in
      ``n_nan_effect``.
    - ``patching_pairs`` (:data:`PATCHING_PAIRS_COLUMNS`): pairs per (task, model) and
      reason, summed over shards, ``used`` included.
    """
    _require(frame, PATCHING_REQUIRED, "patching_tables")
    pairs = _pair_counts(counts)
    if frame.empty:
        return {
            "patching_heatmap": _empty(PATCHING_HEATMAP_COLUMNS),
            "patching_by_layer": _empty(PATCHING_BY_LAYER_COLUMNS),
            "patching_pairs": pairs,
        }
    frame = _with_offsets(frame.astype({"effect": float, "kl": float}))
    return {
        "patching_heatmap": _heatmap(frame, max_offset),
        "patching_by_layer": _by_layer(_per_pair(frame), n_boot=n_boot, level=level, seed=seed),
        "patching_pairs": pairs,
    }


def lens_summary(
    frame: pd.DataFrame,
    *,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Mean of each metric per (layer, position) with percentile-bootstrap CIs over sequences.

    ``frame`` is :func:`~powersampling.interp.logit_lens.logit_lens` output (one row per
    sequence in each group). With ``cluster`` (a column of ``frame``, e.g. a problem id added
    by the caller), sequences of the same cluster are resampled together, as in
    :func:`powersampling.stats.bootstrap_ci`. Columns: ``layer``, ``n_layers``,
    ``position``, ``n_sequences``, and for each of ``kl``, ``top1_agree``, ``entropy`` the
    mean and ``<metric>_ci_low``, ``<metric>_ci_high``.
    """
    missing = [c for c in ["layer", "n_layers", "position", *LENS_METRICS] if c not in frame]
    if cluster is not None and cluster not in frame:
        missing.append(cluster)
    if missing:
        raise UserError(f"lens_summary: the frame has no column(s) {', '.join(missing)}")
    out = []
    for (layer, position), group in frame.groupby(["layer", "position"], sort=True):
        record = {
            "layer": layer,
            "n_layers": int(group["n_layers"].iloc[0]),
            "position": position,
            "n_sequences": len(group),
        }
        labels = None if cluster is None else group[cluster].to_numpy()
        for metric in LENS_METRICS:
            mean, low, high = bootstrap_ci(
                group[metric].to_numpy(dtype=float), labels, n_boot=n_boot, level=level, seed=seed
            )
            record |= {metric: mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        out.append(record)
    columns = ["layer", "n_layers", "position", "n_sequences"]
    columns += [f"{m}{s}" for m in LENS_METRICS for s in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(out, columns=columns)
