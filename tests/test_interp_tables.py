"""The report tables of LogitLens, truncated models and activation patching, checked against
hand computations on small synthetic frames."""

import math

import numpy as np
import pandas as pd
import pytest

from powersampling.errors import UserError
from powersampling.interp.tables import (
    LENS_COLUMNS,
    LENS_VS_TRUNCATION_COLUMNS,
    PATCHING_BY_LAYER_COLUMNS,
    PATCHING_HEATMAP_COLUMNS,
    PATCHING_PAIRS_COLUMNS,
    TRUNCATION_COLUMNS,
    lens_table,
    lens_vs_truncation,
    patching_tables,
    truncation_table,
)

BOOT = {"n_boot": 200, "level": 0.9, "seed": 3}


# --------------------------------------------------------------------------------------
# LogitLens


def lens_rows(models=("toy",), tasks=("synthetic",), n_layers=3, n_problems=4) -> pd.DataFrame:
    """KL = (n_layers - 1 - layer) * (problem + 1) (+ 0.5 over the answer), top-1 = 1 at
    the last layer, entropy = layer."""
    rows = []
    for task in tasks:
        for model in models:
            for problem in range(n_problems):
                for layer in range(n_layers):
                    for position, extra in [("last_prompt", 0.0), ("answer", 0.5)]:
                        depth = n_layers - 1 - layer
                        rows.append(
                            {"task": task, "model": model, "problem_id": f"p{problem}",
                             "difficulty": 1, "correct": True, "n_answer_tokens": 3,
                             "layer": layer, "n_layers": n_layers, "position": position,
                             "n_positions": 1 if position == "last_prompt" else 3,
                             "kl": depth * (problem + 1) + (extra if depth else 0.0),
                             "top1_agree": float(depth == 0), "entropy": float(layer)}
                        )  # fmt: skip
    return pd.DataFrame(rows)


def test_lens_table_means_per_task_model_layer_and_position():
    table = lens_table(lens_rows(models=("toy", "big")), **BOOT)
    assert list(table.columns) == LENS_COLUMNS
    assert len(table) == 2 * 3 * 2  # models x layers x position kinds
    row = table.set_index(["model", "layer", "position"]).loc[("toy", 0, "answer")]
    assert row.n_problems == 4 and row.n_layers == 3
    assert row.kl == pytest.approx(np.mean([2 * (p + 1) + 0.5 for p in range(4)]))
    assert row.kl_ci_low <= row.kl <= row.kl_ci_high
    assert row.kl_ci_low < row.kl_ci_high  # problems differ: the interval has width
    last = table[table["layer"] == 2]
    assert (last["kl"] == 0).all() and (last["top1_agree"] == 1).all()


def test_a_groups_lens_interval_does_not_depend_on_other_groups():
    alone = lens_table(lens_rows(models=("toy",)), **BOOT)
    together = lens_table(lens_rows(models=("toy", "big")), **BOOT)
    together = together[together["model"] == "toy"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)


def test_empty_lens_frame_gives_an_empty_table():
    assert list(lens_table(pd.DataFrame(), **BOOT).columns) == LENS_COLUMNS
    with pytest.raises(UserError, match="kl"):
        lens_table(lens_rows().drop(columns="kl"), **BOOT)


# --------------------------------------------------------------------------------------
# Truncated models

MODELS = {
    "toy": {"source": "toy"},
    "toy-L1+last": {"truncation": {"of": "toy", "layers": 1, "keep_last": True,
                                   "kept": [0, 3], "depth": 4}},
    "toy-L2+last": {"truncation": {"of": "toy", "layers": 2, "keep_last": True,
                                   "kept": [0, 1, 3], "depth": 4}},
    "toy-L2": {"truncation": {"of": "toy", "layers": 2, "keep_last": False,
                              "kept": [0, 1], "depth": 4}},
    "hub-L3": {"truncation": {"of": "hub", "layers": 3, "keep_last": True,
                              "kept": None, "depth": None}},
    "hub": {"source": "org/hub"},
    "other": {"source": "org/other"},
}  # fmt: skip


def accuracy_rows(models=("toy", "toy-L1+last", "toy-L2+last", "other")) -> pd.DataFrame:
    rows = []
    for task in ["synthetic", "math500"]:
        for i, model in enumerate(models):
            for method in ["greedy", "power_a4"]:
                acc = 0.1 * (i + 1) + (0.05 if method == "power_a4" else 0.0)
                rows.append(
                    {"task": task, "model": model, "method": method, "sampler": "x",
                     "accuracy": acc, "ci_low": acc - 0.02, "ci_high": acc + 0.02,
                     "n_problems": 10, "n_samples": 10}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_truncation_table_takes_l_for_truncations_and_the_depth_for_the_full_model():
    table = truncation_table(accuracy_rows(), MODELS)
    assert list(table.columns) == TRUNCATION_COLUMNS
    assert set(table["model"]) == {"toy", "toy-L1+last", "toy-L2+last"}  # not "other"
    assert len(table) == 2 * 2 * 3  # tasks x methods x (two truncations + full)
    by_model = table.drop_duplicates("model").set_index("model")
    assert by_model.loc["toy-L1+last", "layers_kept"] == 1
    assert by_model.loc["toy-L1+last", "n_blocks"] == 2  # block 0 + the last block
    assert by_model.loc["toy-L2+last", "layers_kept"] == 2
    assert by_model.loc["toy-L2+last", "n_blocks"] == 3
    assert by_model.loc["toy", "layers_kept"] == 4 and by_model.loc["toy", "n_blocks"] == 4
    assert by_model.loc["toy", "is_full"] and not by_model.loc["toy-L2+last", "is_full"]
    assert pd.isna(by_model.loc["toy", "keep_last"])
    assert (table["base_model"] == "toy").all()
    row = table.set_index(["task", "model", "method"]).loc[("math500", "toy-L2+last", "power_a4")]
    assert row.accuracy == pytest.approx(0.35) and row.ci_high == pytest.approx(0.37)
    # Within a (task, base model, method): by layers kept, the full model last.
    first = table[(table["task"] == "math500") & (table["method"] == "greedy")]
    assert list(first["layers_kept"]) == [1, 2, 4]


def test_full_model_is_added_only_where_a_truncation_ran():
    accuracy = accuracy_rows()
    accuracy = accuracy[~((accuracy["model"] != "toy") & (accuracy["method"] == "greedy"))]
    table = truncation_table(accuracy, MODELS)
    assert set(table["method"]) == {"power_a4"}


def test_truncation_without_a_known_depth():
    table = truncation_table(accuracy_rows(("hub", "hub-L3")), MODELS)
    full = table[table["is_full"]]
    truncated = table[~table["is_full"]]
    assert full["layers_kept"].isna().all() and full["n_blocks"].isna().all()
    assert (truncated["layers_kept"] == 3).all() and (truncated["n_blocks"] == 4).all()


def test_no_truncations_give_an_empty_truncation_table():
    plain = {"toy": MODELS["toy"], "other": MODELS["other"]}
    assert truncation_table(accuracy_rows(), plain).empty
    assert truncation_table(accuracy_rows(("toy", "other")), MODELS).empty
    empty = truncation_table(pd.DataFrame(), MODELS)
    assert empty.empty and list(empty.columns) == TRUNCATION_COLUMNS


def lens_for(model: str, n_layers: int = 4, task: str = "synthetic") -> pd.DataFrame:
    """A lens table whose values name the model and layer: kl = 10 * layer (+ 1 at the
    answer) for toy, 1000 + ... for any other model; top-1 = layer / 10."""
    base = 0 if model == "toy" else 1000
    rows = []
    for layer in range(n_layers):
        for position, extra in [("last_prompt", 0.0), ("answer", 1.0)]:
            kl = base + 10.0 * layer + extra
            rows.append(
                {"task": task, "model": model, "layer": layer, "n_layers": n_layers,
                 "position": position, "n_problems": 5, "kl": kl, "kl_ci_low": kl - 0.5,
                 "kl_ci_high": kl + 0.5, "top1_agree": layer / 10 + extra / 100,
                 "top1_agree_ci_low": 0.0, "top1_agree_ci_high": 1.0, "entropy": 1.0,
                 "entropy_ci_low": 0.5, "entropy_ci_high": 1.5}
            )  # fmt: skip
    return pd.DataFrame(rows)[LENS_COLUMNS]


def test_lens_vs_truncation_reads_the_base_models_lens_at_layer_l_minus_1():
    truncation = truncation_table(accuracy_rows(), MODELS)
    # Lens rows of the truncated models themselves and of another task must not be used.
    lens = pd.concat(
        [lens_for("toy"), lens_for("toy-L2+last", 3), lens_for("toy", task="other_task")],
        ignore_index=True,
    )
    lens.loc[lens["task"] == "other_task", "kl"] = -1.0
    table = lens_vs_truncation(truncation, lens)
    assert list(table.columns) == LENS_VS_TRUNCATION_COLUMNS
    assert set(table["task"]) == {"synthetic"}  # math500 has no lens
    assert len(table) == 2 * 2  # methods x truncations, the full model not a row
    row = table.set_index(["method", "layers_kept"]).loc[("greedy", 2)]
    assert row.model == "toy-L2+last" and row.lens_layer == 1 and row.n_layers == 4
    assert row.kl_last_prompt == 10.0 and row.kl_answer == 11.0
    assert row.kl_last_prompt_ci_low == 9.5
    assert row.top1_last_prompt == pytest.approx(0.1)
    assert row.top1_answer == pytest.approx(0.11)
    assert row.accuracy == pytest.approx(0.3)
    assert row.full_accuracy == pytest.approx(0.1)  # toy, greedy
    l1 = table.set_index(["method", "layers_kept"]).loc[("power_a4", 1)]
    assert l1.kl_last_prompt == 0.0 and l1.full_accuracy == pytest.approx(0.15)


def test_lens_vs_truncation_without_the_answer_position_or_either_side():
    truncation = truncation_table(accuracy_rows(), MODELS)
    lens = lens_for("toy")
    table = lens_vs_truncation(truncation, lens[lens["position"] == "last_prompt"])
    assert table["kl_answer"].isna().all() and table["kl_last_prompt"].notna().all()
    for empty in [
        lens_vs_truncation(truncation, pd.DataFrame(columns=LENS_COLUMNS)),
        lens_vs_truncation(pd.DataFrame(columns=TRUNCATION_COLUMNS), lens),
        lens_vs_truncation(truncation, lens_for("other")),  # no lens of the base model
    ]:
        assert empty.empty and list(empty.columns) == LENS_VS_TRUNCATION_COLUMNS


# --------------------------------------------------------------------------------------
# Activation patching


def pair_rows(pair_id, n_positions, changed, *, n_layers=2, effect=None, task="pairs",
              model="toy") -> list[dict]:  # fmt: skip
    """One pair's rows: effect = layer + position / 100 unless given (``effect`` may be a
    function of (layer, position)); kl = 2 * effect; ``changed`` positions differ."""
    rows = []
    for layer in range(n_layers):
        for position in range(n_positions):
            value = layer + position / 100 if effect is None else effect(layer, position)
            rows.append(
                {"task": task, "model": model, "pair_id": pair_id, "layer": layer,
                 "n_layers": n_layers, "position": position, "token": 100 + position,
                 "corrupted_token": 200 + position if position in changed else 100 + position,
                 "kl": 2 * value, "logit_diff": 0.0, "effect": value, "answer_logp": -1.0,
                 "clean_logit_diff": 1.0, "corrupted_logit_diff": 0.0,
                 "clean_answer_logp": -0.5, "corrupted_answer_logp": -3.0,
                 "corrupted_kl": 1.0, "difficulty": 1}
            )  # fmt: skip
    return rows


def patching_frame() -> pd.DataFrame:
    """Pair a: 5 positions, changed at 1. Pair b: 3 positions, changed at 0 and 1 (a
    number of two tokens). Pair c: 4 positions, changed at 2, all effects NaN (its clean
    and corrupted runs have the same logit difference)."""
    return pd.DataFrame(
        pair_rows("a", 5, {1})
        + pair_rows("b", 3, {0, 1})
        + pair_rows("c", 4, {2}, effect=lambda layer, position: math.nan)
    )


COUNTS = [
    {"task": "pairs", "model": "toy", "pairs": 2, "different_lengths": 0,
     "same_first_answer_token": 1, "used": 1},
    {"task": "pairs", "model": "toy", "pairs": 3, "different_lengths": 1,
     "same_first_answer_token": 0, "used": 2},
    {"task": "pairs", "model": "toy", "same_answer": 19, "out_of_range": 18},
]  # fmt: skip


def test_heatmap_aligns_pairs_of_different_lengths_on_the_answer_position():
    heat = patching_tables(patching_frame(), COUNTS, **BOOT)["patching_heatmap"]
    assert list(heat.columns) == PATCHING_HEATMAP_COLUMNS
    cell = heat.set_index(["layer", "offset"])
    # Offset 0 is position 4 of a, 2 of b and 3 of c (NaN, left out of the mean).
    zero = cell.loc[(1, 0)]
    assert zero.effect == pytest.approx(np.mean([1.04, 1.02]))
    assert zero.kl == pytest.approx(np.mean([2.08, 2.04]))
    assert zero.n_pairs == 3 and zero.n_nan_effect == 1
    # Offset -4 is position 0 of a only.
    far = cell.loc[(0, -4)]
    assert far.effect == pytest.approx(0.0) and far.n_pairs == 1 and far.n_nan_effect == 0
    assert far.n_layers == 2
    assert sorted(heat["offset"].unique()) == [-4, -3, -2, -1, 0]


def test_heatmap_keeps_offsets_down_to_max_offset():
    heat = patching_tables(patching_frame(), COUNTS, **BOOT, max_offset=2)["patching_heatmap"]
    assert sorted(heat["offset"].unique()) == [-2, -1, 0]


def test_by_layer_reads_the_changed_position_and_the_best_position_per_pair():
    by_layer = patching_tables(patching_frame(), COUNTS, **BOOT)["patching_by_layer"]
    assert list(by_layer.columns) == PATCHING_BY_LAYER_COLUMNS
    row = by_layer.set_index("layer").loc[1]
    assert row.n_pairs == 3 and row.n_nan_effect == 1 and row.n_layers == 2
    # a: position 1 -> 1.01; b: mean of positions 0 and 1 -> 1.005; c: NaN, left out.
    assert row.changed_effect == pytest.approx(np.mean([1.01, 1.005]))
    assert row.changed_kl == pytest.approx(np.mean([2.02, 2.01]))
    assert row.max_effect == pytest.approx(np.mean([1.04, 1.02]))  # last positions
    for metric in ["changed_effect", "max_effect", "changed_kl"]:
        assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"]
    assert row.max_effect_ci_low < row.max_effect_ci_high


def test_pair_counts_are_summed_over_shards():
    pairs = patching_tables(patching_frame(), COUNTS, **BOOT)["patching_pairs"]
    assert list(pairs.columns) == PATCHING_PAIRS_COLUMNS
    n = pairs.set_index("reason")["n"].to_dict()
    assert n == {"pairs": 5, "different_lengths": 1, "same_first_answer_token": 1, "used": 3,
                 "same_answer": 19, "out_of_range": 18}  # fmt: skip
    with pytest.raises(UserError, match="task and a model"):
        patching_tables(patching_frame(), [{"pairs": 2}], **BOOT)
    with pytest.raises(UserError, match="integer"):
        patching_tables(patching_frame(), [{"task": "t", "model": "m", "pairs": 1.5}], **BOOT)


def test_patching_intervals_do_not_depend_on_other_models():
    alone = patching_tables(patching_frame(), [], **BOOT)["patching_by_layer"]
    other = patching_frame().assign(model="big")
    both = patching_tables(pd.concat([patching_frame(), other]), [], **BOOT)
    toy = both["patching_by_layer"].query("model == 'toy'").reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, toy)


def test_empty_patching_frame_gives_empty_tables_but_keeps_the_counts():
    tables = patching_tables(pd.DataFrame(), COUNTS[:1], **BOOT)
    assert tables["patching_heatmap"].empty and tables["patching_by_layer"].empty
    assert list(tables["patching_heatmap"].columns) == PATCHING_HEATMAP_COLUMNS
    assert list(tables["patching_by_layer"].columns) == PATCHING_BY_LAYER_COLUMNS
    assert tables["patching_pairs"]["n"].sum() == 4
    none = patching_tables(pd.DataFrame(), [], **BOOT)["patching_pairs"]
    assert none.empty and list(none.columns) == PATCHING_PAIRS_COLUMNS
