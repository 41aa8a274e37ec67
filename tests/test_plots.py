"""Every figure writes a valid, non-empty SVG or PNG, also from empty tables."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from powersampling import plots
from powersampling.errors import UserError
from powersampling.interp.tables import (
    LENS_COLUMNS,
    LENS_VS_TRUNCATION_COLUMNS,
    PATCHING_BY_LAYER_COLUMNS,
    PATCHING_HEATMAP_COLUMNS,
    TRUNCATION_COLUMNS,
    lens_table,
    lens_vs_truncation,
    patching_tables,
    truncation_table,
)
from powersampling.metrics import (
    ACCEPTANCE_COLUMNS,
    ACCURACY_COLUMNS,
    DIFFICULTY_COLUMNS,
    PASS_AT_K_COLUMNS,
    SAMPLER_TRACE_COLUMNS,
)
from powersampling.stages.plots import plot as stage_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def accuracy_rows() -> pd.DataFrame:
    rows = []
    for task in ["synthetic", "math500"]:
        for model in ["toy", "toy_trunc"]:
            for method, sampler, t, alpha in [
                ("greedy", "greedy", 0.0, None),
                ("temp_0.5", "temperature", 0.5, None),
                ("temp_1.0", "temperature", 1.0, None),
                ("power_a4", "power", 0.25, 4.0),
                ("power_a2", "power", 0.5, 2.0),
            ]:
                acc = 0.3 + 0.1 * t + (0.2 if sampler == "power" else 0)
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "method": method,
                        "sampler": sampler,
                        "temperature": t,
                        "alpha": alpha,
                        "accuracy": acc,
                        "ci_low": acc - 0.05,
                        "ci_high": acc + 0.05,
                        "mean_logp": -10 * (1 + t),
                        "logp_ci_low": -10 * (1 + t) - 1,
                        "logp_ci_high": -10 * (1 + t) + 1,
                        "mean_tokens_decoded": 400.0 if sampler == "power" else 40.0,
                        "tokens_decoded_ci_low": 380.0 if sampler == "power" else 38.0,
                        "tokens_decoded_ci_high": 420.0 if sampler == "power" else 42.0,
                    }
                )
    return pd.DataFrame(rows).astype({"alpha": float})


def acceptance_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": "synthetic", "model": "toy", "method": m, "block": b,
             "acceptance_rate": 0.5 / (b + 1), "mean_logp": -float(b)}
            for m in ["power_a2", "power_a4"]
            for b in range(4)
        ]
    )  # fmt: skip


def difficulty_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": "synthetic", "model": "toy", "method": m, "difficulty": d,
             "accuracy": a / d, "ci_low": a / d - 0.1, "ci_high": a / d + 0.1}
            for m, a in [("greedy", 0.9), ("power_a4", 0.95)]
            for d in range(1, 6)
        ]
    )  # fmt: skip


def passk_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": "synthetic", "model": "toy", "method": m, "k": k,
             "pass_at_k": 1 - 0.7**k}
            for m in ["greedy", "temp_1.0"]
            for k in range(1, 17)
        ]
    )  # fmt: skip


def trace_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": "synthetic", "model": "toy", "method": m, "sampler": sampler,
             "stage": stage, "field": field, "n_rows": 10, "mean": value, "total": 10 * value}
            for m, sampler, fields in [
                ("power_a4", "power", {"accepted": 1.5, "logp": -3.0}),
                ("smc_16", "smc", {"ess": 7.0}),
            ]
            for stage in range(3)
            for field, value in fields.items()
        ]
    )  # fmt: skip


TRUNCATED_MODELS = {
    f"toy-L{layers}{'+last' if keep_last else ''}": {
        "truncation": {"of": "toy", "layers": layers, "keep_last": keep_last, "depth": 4,
                       "kept": [*range(layers), 3] if keep_last else list(range(layers))}
    }
    for layers, keep_last in [(1, True), (2, True), (2, False), (3, False)]
}  # fmt: skip


def truncation_rows(models=TRUNCATED_MODELS) -> pd.DataFrame:
    accuracy = pd.DataFrame(
        [
            {"task": "synthetic", "model": model, "method": method,
             "accuracy": acc, "ci_low": acc - 0.05, "ci_high": acc + 0.05, "n_problems": 20}
            for method, bonus in [("greedy", 0.0), ("power_a4", 0.1)]
            for model, acc in [("toy", 0.8 + bonus), ("toy-L1+last", 0.2 + bonus),
                               ("toy-L2+last", 0.5 + bonus), ("toy-L2", 0.3 + bonus),
                               ("toy-L3", 0.6 + bonus)]
        ]
    )  # fmt: skip
    return truncation_table(accuracy, models)


def logit_lens_rows() -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {"task": task, "model": model, "problem_id": p, "layer": layer, "n_layers": n,
             "position": position, "kl": (n - 1 - layer) * (1 + 0.3 * p) * 2.0**-layer,
             "top1_agree": float(layer == n - 1 or (p + layer) % 3 == 0),
             "entropy": 1.0 / (layer + 1)}
            for task in ["synthetic", "math500"]
            for model, n in [("toy", 4), ("big", 6)]
            for p in range(5)
            for layer in range(n)
            for position in ["last_prompt", "answer"]
            if task == "synthetic" or position == "last_prompt"  # math500: empty answers
        ]
    )  # fmt: skip
    return lens_table(frame, n_boot=50, level=0.9, seed=0)


def lens_vs_truncation_rows() -> pd.DataFrame:
    return lens_vs_truncation(truncation_rows(), logit_lens_rows())


def patching_frame() -> pd.DataFrame:
    rows = []
    for model in ["toy", "big"]:
        for pair, n_positions in enumerate([6, 8, 7]):
            for layer in range(4):
                for position in range(n_positions):
                    changed = position == n_positions - 3
                    effect = (layer + 1) / 4 * (1.0 if changed else 0.1 * (pair - 1))
                    if model == "big" and pair == 1:  # same logit difference clean/corrupted
                        effect = float("nan")
                    rows.append(
                        {"task": "pairs", "model": model, "pair_id": pair, "layer": layer,
                         "n_layers": 4, "position": position, "token": position,
                         "corrupted_token": position + 100 * changed, "kl": 1 - effect / 2,
                         "effect": effect}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def patching_heatmap_rows() -> pd.DataFrame:
    return patching_tables(patching_frame(), [], n_boot=50)["patching_heatmap"]


def patching_by_layer_rows() -> pd.DataFrame:
    return patching_tables(patching_frame(), [], n_boot=50)["patching_by_layer"]


DPS_SWEEP_COLUMNS = ["task", "model", "policy", "tau", "kind", "chosen", "accuracy",
                     "accuracy_low", "accuracy_high", "tokens_per_question"]  # fmt: skip
DPS_CALIBRATION_COLUMNS = ["task", "model", "controller", "bin", "n", "mean_p_enough",
                           "enough_rate"]  # fmt: skip
DPS_IMPORTANCE_COLUMNS = ["task", "model", "feature", "importance_mean", "importance_std",
                          "scoring"]  # fmt: skip


def dps_sweep_rows():
    rows = []
    for task in ["arithmetic", "binding"]:
        for policy, k in [("fixed_k2", 2), ("fixed_k8", 8), ("esc", 3.1), ("oracle", 2.4)]:
            kind = "oracle" if policy == "oracle" else "baseline"
            rows.append((task, policy, np.nan, kind, False, 0.5 + 0.01 * k, 100 * k))
        for tau in [0.0, 0.3, 1.0]:
            rows.append((task, "dps_gbdt", tau, "controller", tau == 0.3, 0.55 - 0.02 * tau,
                         800 - 600 * tau))  # fmt: skip
    frame = pd.DataFrame(
        rows, columns=["task", "policy", "tau", "kind", "chosen", "accuracy", "tokens_per_question"]
    )
    return frame.assign(
        model="toy", accuracy_low=frame["accuracy"] - 0.05, accuracy_high=frame["accuracy"] + 0.05
    )[DPS_SWEEP_COLUMNS]


def dps_calibration_rows():
    rows = [
        ("arithmetic", "toy", controller, b, 5 + b, (b + 0.5) / 10, min(1.0, (b + 1) / 9))
        for controller in ["gbdt", "mlp_hq"]
        for b in range(3, 10)
    ]
    return pd.DataFrame(rows, columns=DPS_CALIBRATION_COLUMNS)


def dps_importance_rows():
    features = ["top_answer_share", "k", "perplexity_mean", "distinct_answers"]
    return pd.DataFrame(
        {
            "task": "arithmetic",
            "model": "toy",
            "feature": features,
            "importance_mean": [0.2, 0.05, 0.01, -0.01],
            "importance_std": 0.01,
            "scoring": "roc_auc",
        }
    )


def reliability_tables_of_toy_rows():
    """Reliability tables of two models, three settings, two tasks, from made-up rows."""
    from powersampling.reliability import annotate, reliability_tables

    rng = np.random.default_rng(0)
    rows = []
    for task in ["binding", "arithmetic"]:
        for model in ["toy", "toy_moe"]:
            for method, temperature, runs in [("greedy", 0.0, 1), ("temp_0.5", 0.5, 2),
                                              ("temp_1.0", 1.0, 2)]:  # fmt: skip
                for seed in range(runs):
                    for q in range(12):
                        text = rng.choice(["7", "8", "it is 7", "", "3+4=7"])
                        rows.append({
                            "task": task, "model": model, "method": method, "seed": seed,
                            "problem_id": f"q{q}", "completion": text, "reference": "7",
                            "correct": text.endswith("7"), "compliant": text in ("7", "8"),
                            "finish_reason": "eos", "n_new_tokens": 2,
                            "logp_sum": -rng.uniform(0, 2), "min_token_logp": -rng.uniform(1, 3),
                            "sampled_logq_sum": -temperature, "temperature": temperature,
                        })  # fmt: skip
    return reliability_tables(annotate(pd.DataFrame(rows), {"binding": True}), n_boot=50)


RELIABILITY_TABLES = reliability_tables_of_toy_rows()
RELIABILITY_COLUMNS = list(RELIABILITY_TABLES["reliability"].columns)
RELIABILITY_BINS_COLUMNS = list(RELIABILITY_TABLES["reliability_bins"].columns)
FAILURES_COLUMNS = list(RELIABILITY_TABLES["failures"].columns)


CASES = [
    (plots.plot_accuracy_by_method, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_accuracy_vs_temperature, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_accuracy_by_difficulty, difficulty_rows, DIFFICULTY_COLUMNS),
    (plots.plot_accuracy_vs_compute, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_logp_vs_compute, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_logp_by_method, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_tokens_by_method, accuracy_rows, ACCURACY_COLUMNS),
    (plots.plot_acceptance_by_block, acceptance_rows, ACCEPTANCE_COLUMNS),
    (plots.plot_pass_at_k, passk_rows, PASS_AT_K_COLUMNS),
    (plots.plot_sampler_trace, trace_rows, SAMPLER_TRACE_COLUMNS),
    (plots.plot_truncation_accuracy, truncation_rows, TRUNCATION_COLUMNS),
    (plots.plot_logit_lens, logit_lens_rows, LENS_COLUMNS),
    (plots.plot_lens_vs_truncation, lens_vs_truncation_rows, LENS_VS_TRUNCATION_COLUMNS),
    (plots.plot_patching_heatmap, patching_heatmap_rows, PATCHING_HEATMAP_COLUMNS),
    (plots.plot_patching_by_layer, patching_by_layer_rows, PATCHING_BY_LAYER_COLUMNS),
    (plots.plot_dps_pareto, dps_sweep_rows, DPS_SWEEP_COLUMNS),
    (plots.plot_dps_calibration, dps_calibration_rows, DPS_CALIBRATION_COLUMNS),
    (plots.plot_dps_importance, dps_importance_rows, DPS_IMPORTANCE_COLUMNS),
    (plots.plot_reliability, lambda: RELIABILITY_TABLES["reliability"], RELIABILITY_COLUMNS),
    (
        plots.plot_reliability_confidence,
        lambda: RELIABILITY_TABLES["reliability"],
        RELIABILITY_COLUMNS,
    ),
    (
        plots.plot_reliability_calibration,
        lambda: RELIABILITY_TABLES["reliability_bins"],
        RELIABILITY_BINS_COLUMNS,
    ),
    (plots.plot_failures, lambda: RELIABILITY_TABLES["failures"], FAILURES_COLUMNS),
]
IDS = [case[0].__name__ for case in CASES]


def assert_valid(path):
    data = path.read_bytes()
    assert len(data) > 0
    if path.suffix == ".png":
        assert data.startswith(PNG_MAGIC)
    else:
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    # Written atomically: no temporary file is left beside the figure.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix", [".svg", ".png"])
@pytest.mark.parametrize(("plot", "make", "columns"), CASES, ids=IDS)
def test_plot_writes_a_valid_file(tmp_path, plot, make, columns, suffix):
    path = tmp_path / f"figure{suffix}"
    assert plot(make(), path) is None
    assert_valid(path)


@pytest.mark.parametrize(("plot", "make", "columns"), CASES, ids=IDS)
def test_plot_of_an_empty_table_says_so(tmp_path, plot, make, columns):
    path = tmp_path / "empty.svg"
    plot(pd.DataFrame(columns=columns), path)
    assert_valid(path)
    text = "".join(ET.fromstring(path.read_bytes()).itertext())
    assert "no " in text


def test_empty_acceptance_table_names_power_sampling(tmp_path):
    path = tmp_path / "acc.svg"
    plots.plot_acceptance_by_block(pd.DataFrame(columns=ACCEPTANCE_COLUMNS), path)
    assert "no power-sampling runs" in "".join(ET.fromstring(path.read_bytes()).itertext())


def test_temperature_plot_without_temperature_rows(tmp_path):
    table = accuracy_rows()
    path = tmp_path / "t.svg"
    plots.plot_accuracy_vs_temperature(table[table.sampler != "temperature"], path)
    text = "".join(ET.fromstring(path.read_bytes()).itertext())
    assert "α=4" in text and "greedy" in text


def test_unknown_format_and_missing_columns_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="format"):
        plots.plot_accuracy_by_method(accuracy_rows(), tmp_path / "figure.jpeg")
    with pytest.raises(UserError, match="ci_low"):
        plots.plot_accuracy_by_method(accuracy_rows().drop(columns="ci_low"), tmp_path / "f.svg")
    assert list(tmp_path.iterdir()) == []


def test_same_table_gives_identical_svg(tmp_path):
    first, second = tmp_path / "a" / "f.svg", tmp_path / "b" / "f.svg"
    plots.plot_accuracy_vs_temperature(accuracy_rows(), first)
    plots.plot_accuracy_vs_temperature(accuracy_rows(), second)
    assert first.read_bytes() == second.read_bytes()


def test_every_figure_is_registered_once_with_its_table_and_caption():
    assert [spec.draw for spec in plots.FIGURES.values()] == [case[0] for case in CASES]
    for name, spec in plots.FIGURES.items():
        assert spec.name == name
        assert spec.draw.__name__ == f"plot_{name}"
        tables = {"accuracy", "accuracy_by_difficulty", "pass_at_k", "acceptance_by_block"}
        inside = {"truncation", "logit_lens", "lens_vs_truncation", "patching_heatmap"}
        dps = {"dps_sweep", "dps_calibration", "dps_importance"}
        reliability = {"reliability", "reliability_bins", "failures"}
        assert spec.table in tables | inside | dps | reliability | {
            "sampler_trace",
            "patching_by_layer",
        }
        assert spec.study in {None, "truncation", "logit_lens", "patching", "dps", "reliability"}
        assert (spec.study is None) == (spec.table in tables | {"sampler_trace"})
        assert spec.category[0].isdigit(), spec.category  # report categories are numbered
        caption = ROOT / spec.caption
        assert caption.is_file() and caption.read_text().strip(), spec.caption


def test_the_plot_stage_draws_a_registered_figure_from_its_table(tmp_path):
    table = tmp_path / "pass_at_k.parquet"
    passk_rows().to_parquet(table)
    stage_plot("pass_at_k", table, tmp_path / "figures" / "pass_at_k.svg")
    direct = tmp_path / "direct" / "pass_at_k.svg"
    plots.plot_pass_at_k(pd.read_parquet(table), direct)
    assert (tmp_path / "figures" / "pass_at_k.svg").read_bytes() == direct.read_bytes()
    with pytest.raises(UserError, match="unknown plot 'nope'"):
        stage_plot("nope", table, tmp_path / "nope.svg")


def test_inside_the_model_figures_draw_from_their_parquet_tables(tmp_path):
    """The tables keep nullable columns (the full model's keep_last, an unknown depth)
    through Parquet, and the figures draw them."""
    unknown_depth = {
        name: {"truncation": {**entry["truncation"], "kept": None, "depth": None}}
        for name, entry in TRUNCATED_MODELS.items()
    }  # the full model's point cannot be placed: it is left out
    cases = [
        ("truncation_accuracy", truncation_rows()),
        ("truncation_accuracy", truncation_rows(unknown_depth)),
        ("lens_vs_truncation", lens_vs_truncation_rows()),
    ]
    for i, (name, table) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        table.to_parquet(folder / f"{name}.parquet")
        figure = folder / "figure" / f"{name}.svg"
        stage_plot(name, folder / f"{name}.parquet", figure)
        assert_valid(figure)
        assert "layers kept" in "".join(ET.fromstring(figure.read_bytes()).itertext())
    assert plots.FIGURES["truncation_accuracy"].category == plots.INSIDE
