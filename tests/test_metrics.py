"""Metric tables from graded rows: accuracy with CIs, pass@k, acceptance per block."""

import math

import numpy as np
import pandas as pd
import pytest

from powersampling.errors import UserError
from powersampling.io import GRADED_SCHEMA, read_parquet, write_parquet
from powersampling.metrics import (
    ACCEPTANCE_COLUMNS,
    ACCURACY_COLUMNS,
    DIFFICULTY_COLUMNS,
    PASS_AT_K_COLUMNS,
    SAMPLER_TRACE_COLUMNS,
    acceptance_by_block,
    accuracy_by_difficulty,
    accuracy_table,
    pass_at_k_table,
    sampler_trace_table,
)
from powersampling.stats import pass_at_k

METHODS = {
    "greedy": {"sampler": "greedy"},
    "temp_0.7": {"sampler": "temperature", "T": 0.7},
    "power_a4": {"sampler": "power", "alpha": 4.0, "block_size": 8, "mcmc_steps": 2},
}


def trace(rng, n_blocks=3):
    return [
        {
            "block": b,
            "length": 8 * (b + 1),
            "proposals": 2,
            "accepted": int(rng.integers(0, 3)),
            "logp": float(-rng.random() * (b + 1)),
        }
        for b in range(n_blocks)
    ]


def make_graded(n_problems=12, seeds=(0, 1, 2), models=("toy", "toy2"), seed=0) -> pd.DataFrame:
    """Graded rows with known structure; power rows carry MCMC fields and block traces."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for method, config in METHODS.items():
            power = config["sampler"] == "power"
            for s in seeds:
                shard_times = rng.random(2) * 10  # two shards per seed
                for p in range(n_problems):
                    n_new = int(rng.integers(5, 20))
                    rows.append(
                        {
                            "task": "synthetic",
                            "problem_id": f"q{p:03d}",
                            "model": model,
                            "method": method,
                            "sampler": config["sampler"],
                            "seed": s,
                            "shard": 2 * p // n_problems,
                            "chain": 0,
                            "correct": bool(rng.random() < 0.5),
                            "compliant": bool(rng.random() < 0.8),
                            "extracted": None if rng.random() < 0.1 else str(p),
                            "n_new_tokens": n_new,
                            "logp_sum": float(-rng.random() * 10),
                            "temperature": {"greedy": 0.0, "temperature": 0.7}.get(
                                config["sampler"], 0.25
                            ),
                            "tokens_decoded": 5 * n_new if power else None,
                            "tokens_prefilled": 100 if power else None,
                            "shard_decode_time_s": float(shard_times[2 * p // n_problems]),
                            "chain_lifetime_s": float(rng.random()) if power else math.nan,
                            "acceptance_rate": float(rng.random()) if power else None,
                            "sampler_trace": trace(rng) if power else None,
                            "difficulty": 1 + p % 3,
                            "steps_correct": p % 4,
                        }
                    )
    return pd.DataFrame(rows)


# --- accuracy_table -------------------------------------------------------------------


def test_accuracy_table_values_match_hand_computation():
    graded = make_graded()
    table = accuracy_table(graded, METHODS, n_boot=300)
    assert list(table.columns) == ACCURACY_COLUMNS
    assert len(table) == 2 * 3
    for row in table.itertuples():
        rows = graded[(graded.model == row.model) & (graded.method == row.method)]
        assert row.accuracy == pytest.approx(rows.correct.mean())
        assert row.ci_low <= row.accuracy <= row.ci_high and row.ci_low < row.ci_high
        assert (row.n_problems, row.n_seeds, row.n_samples) == (12, 3, 36)
        assert row.compliance_rate == pytest.approx(rows.compliant.mean())
        assert row.extraction_failure_rate == pytest.approx(rows.extracted.isna().mean())
        assert row.mean_new_tokens == pytest.approx(rows.n_new_tokens.mean())
        assert row.mean_logp == pytest.approx(rows.logp_sum.mean())
        assert row.mean_steps_correct == pytest.approx(rows.steps_correct.mean())
        for name in ["new_tokens", "logp", "tokens_decoded"]:  # problem-clustered CIs
            low, high = getattr(row, f"{name}_ci_low"), getattr(row, f"{name}_ci_high")
            assert low < high
        assert row.new_tokens_ci_low <= row.mean_new_tokens <= row.new_tokens_ci_high
        assert row.logp_ci_low <= row.mean_logp <= row.logp_ci_high
        # Each shard's decoding time counts once, whatever its number of rows.
        shard_time = rows.groupby(["seed", "shard"]).shard_decode_time_s.first().sum()
        assert rows.shard_decode_time_s.sum() > 5 * shard_time  # 6 rows per shard
        assert row.decode_time_s == pytest.approx(shard_time)
        assert row.time_per_answer_s == pytest.approx(shard_time / 36)
        if row.method == "power_a4":
            assert (row.sampler, row.alpha) == ("power", 4.0)
            assert row.mean_tokens_decoded == pytest.approx(5 * rows.n_new_tokens.mean())
            assert row.mean_acceptance_rate == pytest.approx(rows.acceptance_rate.mean())
            assert row.mean_chain_lifetime_s == pytest.approx(rows.chain_lifetime_s.mean())
            assert row.mean_blocks == 3  # every answer's trace has three blocks
        else:
            assert math.isnan(row.alpha) and math.isnan(row.mean_acceptance_rate)
            assert math.isnan(row.mean_chain_lifetime_s) and math.isnan(row.mean_blocks)
            # Samplers that do not record it decoded exactly their answer's tokens.
            assert row.mean_tokens_decoded == pytest.approx(rows.n_new_tokens.mean())
        expected_t = {"greedy": 0.0, "temp_0.7": 0.7, "power_a4": 0.25}[row.method]
        assert row.temperature == pytest.approx(expected_t)


def test_accuracy_by_difficulty_matches_hand_computation():
    graded = make_graded(models=("toy",))
    table = accuracy_by_difficulty(graded, n_boot=200)
    assert list(table.columns) == DIFFICULTY_COLUMNS
    assert len(table) == 3 * 3  # methods x difficulties
    for row in table.itertuples():
        rows = graded[(graded.method == row.method) & (graded.difficulty == row.difficulty)]
        assert row.accuracy == pytest.approx(rows.correct.mean())
        assert row.ci_low <= row.accuracy <= row.ci_high
        assert (row.n_problems, row.n_samples) == (4, 12)
        assert row.mean_steps_correct == pytest.approx(rows.steps_correct.mean())
    # Rows without a difficulty are left out; a table without any is empty.
    assert accuracy_by_difficulty(graded.assign(difficulty=None)).empty
    assert accuracy_by_difficulty(graded.drop(columns="difficulty")).empty


def test_accuracy_table_without_config_reads_sampler_and_temperature_from_rows():
    table = accuracy_table(make_graded(models=("toy",)), n_boot=100).set_index("method")
    assert table.loc["temp_0.7", "sampler"] == "temperature"
    assert table.loc["temp_0.7", "temperature"] == pytest.approx(0.7)
    assert table.loc["greedy", "temperature"] == 0.0
    assert table.loc["power_a4"].isna()["alpha"]


def test_accuracy_ci_is_reproducible_and_independent_of_other_groups():
    graded = make_graded()
    full = accuracy_table(graded, METHODS, n_boot=300, seed=5)
    assert full.equals(accuracy_table(graded, METHODS, n_boot=300, seed=5))
    alone = accuracy_table(graded[graded.method == "greedy"], METHODS, n_boot=300, seed=5)
    pd.testing.assert_frame_equal(
        alone.reset_index(drop=True),
        full[full.method == "greedy"].reset_index(drop=True),
    )
    other = accuracy_table(graded, METHODS, n_boot=300, seed=6)
    assert not np.allclose(other.ci_low, full.ci_low)


def test_accuracy_ci_resamples_problems_not_rows():
    # Every seed answers a problem the same way: the CI must match one seed's problem-level CI.
    graded = make_graded(models=("toy",), seeds=(0,), n_problems=40)
    copies = pd.concat([graded.assign(seed=s) for s in range(4)], ignore_index=True)
    one = accuracy_table(graded, METHODS, n_boot=2000).set_index("method")
    four = accuracy_table(copies, METHODS, n_boot=2000).set_index("method")
    assert (four.n_samples == 4 * one.n_samples).all()
    width_one = one.ci_high - one.ci_low
    width_four = four.ci_high - four.ci_low
    np.testing.assert_allclose(width_four, width_one, rtol=0.25)


def test_null_correct_counts_as_wrong():
    graded = make_graded(models=("toy",))
    graded = graded[graded.method == "greedy"].copy()
    graded["correct"] = pd.Series([None] * 6 + [True] * 30, index=graded.index, dtype=object)
    table = accuracy_table(graded, n_boot=50)
    assert table.accuracy.iloc[0] == pytest.approx(1 - 6 / 36)


def test_accuracy_table_rejects_empty_and_malformed_input():
    with pytest.raises(UserError, match="empty"):
        accuracy_table(make_graded().iloc[:0])
    with pytest.raises(UserError, match="correct"):
        accuracy_table(make_graded().drop(columns="correct"))


def test_tables_survive_a_parquet_round_trip(tmp_path):
    graded = make_graded(n_problems=5)
    path = tmp_path / "graded.parquet"
    write_parquet(graded, path, schema=GRADED_SCHEMA)
    back = read_parquet([path])
    pd.testing.assert_frame_equal(
        accuracy_table(back, METHODS, n_boot=100), accuracy_table(graded, METHODS, n_boot=100)
    )
    pd.testing.assert_frame_equal(acceptance_by_block(back), acceptance_by_block(graded))
    pd.testing.assert_frame_equal(pass_at_k_table(back), pass_at_k_table(graded))


# --- pass_at_k_table ------------------------------------------------------------------


def test_pass_at_k_table_endpoints_and_monotonicity():
    graded = make_graded(seeds=(0, 1, 2, 3, 4))
    table = pass_at_k_table(graded)
    assert list(table.columns) == PASS_AT_K_COLUMNS
    for (model, method), sub in table.groupby(["model", "method"]):
        rows = graded[(graded.model == model) & (graded.method == method)]
        per_problem = rows.groupby("problem_id").correct
        assert list(sub.k) == [1, 2, 3, 4, 5]
        # pass@1 is the mean accuracy; pass@n is the share of problems solved at least once.
        assert sub.pass_at_k.iloc[0] == pytest.approx(rows.correct.mean())
        assert sub.pass_at_k.iloc[-1] == pytest.approx(per_problem.any().mean())
        assert np.all(np.diff(sub.pass_at_k) >= -1e-12)
        c = per_problem.sum()
        assert sub.pass_at_k.iloc[1] == pytest.approx(np.mean([pass_at_k(5, x, 2) for x in c]))


def test_pass_at_k_table_uses_the_smallest_sample_count():
    graded = make_graded(models=("toy",), seeds=(0, 1, 2))
    graded = graded.drop(graded.index[(graded.seed == 2) & (graded.problem_id == "q000")])
    table = pass_at_k_table(graded)
    assert table.groupby("method").k.max().eq(2).all()


# --- acceptance_by_block --------------------------------------------------------------


def test_acceptance_by_block_pools_proposals_per_block():
    graded = make_graded(models=("toy",))
    table = acceptance_by_block(graded)
    assert list(table.columns) == ACCEPTANCE_COLUMNS
    assert set(table.method) == {"power_a4"} and list(table.block) == [0, 1, 2]
    entries = [e for t in graded.sampler_trace.dropna() for e in t]
    for row in table.itertuples():
        block = [e for e in entries if e["block"] == row.block]
        accepted = sum(e["accepted"] for e in block)
        proposals = sum(e["proposals"] for e in block)
        assert row.acceptance_rate == pytest.approx(accepted / proposals)
        assert row.mean_logp == pytest.approx(np.mean([e["logp"] for e in block]))


def test_acceptance_by_block_without_traces_is_empty():
    graded = make_graded(models=("toy",))
    none = graded[graded.method != "power_a4"]
    for frame in [none, none.drop(columns="sampler_trace")]:
        table = acceptance_by_block(frame)
        assert table.empty and list(table.columns) == ACCEPTANCE_COLUMNS
    with pytest.raises(UserError, match="empty"):
        acceptance_by_block(graded.iloc[:0])


def test_acceptance_rate_is_nan_for_a_block_without_proposals():
    graded = make_graded(models=("toy",), n_problems=1, seeds=(0,))
    graded = graded[graded.method == "power_a4"].copy()
    graded["sampler_trace"] = [
        [{"block": 0, "length": 4, "proposals": 0, "accepted": 0, "logp": -1.0}]
    ]
    assert math.isnan(acceptance_by_block(graded).acceptance_rate.iloc[0])


# --- sampler_trace_table --------------------------------------------------------------


def test_sampler_trace_table_summarises_any_sampler_keys(tmp_path):
    """A sampler with its own trace keys reaches the table without any schema change, and
    the summary is the same after a Parquet round trip (where records become key/value
    pairs and every number a float)."""
    graded = make_graded(models=("toy",), n_problems=3, seeds=(0,))
    graded = graded[graded.method != "greedy"].copy()
    other = graded.method == "temp_0.7"
    graded.loc[other, "sampler_trace"] = pd.Series(
        [[{"ess": 4.0, "resampled": 1}, {"ess": 2.5}] for _ in range(int(other.sum()))],
        index=graded.index[other],
        dtype=object,
    )
    table = sampler_trace_table(graded)
    assert list(table.columns) == SAMPLER_TRACE_COLUMNS
    ess = table[(table.method == "temp_0.7") & (table.field == "ess")]
    assert list(ess.stage) == [0, 1] and list(ess["mean"]) == [4.0, 2.5]
    assert list(ess.n_rows) == [3, 3]
    resampled = table[(table.method == "temp_0.7") & (table.field == "resampled")]
    assert list(resampled.stage) == [0] and resampled.total.iloc[0] == 3
    power = table[(table.method == "power_a4") & (table.field == "accepted")]
    entries = [t for t in graded[graded.method == "power_a4"].sampler_trace]
    for row in power.itertuples():
        assert row.total == sum(t[row.stage]["accepted"] for t in entries)

    path = tmp_path / "graded.parquet"
    write_parquet(graded, path, GRADED_SCHEMA)
    pd.testing.assert_frame_equal(sampler_trace_table(read_parquet(path)), table)
    pd.testing.assert_frame_equal(
        acceptance_by_block(read_parquet(path)), acceptance_by_block(graded)
    )


def test_sampler_trace_table_without_traces_is_empty():
    graded = make_graded(models=("toy",))
    none = graded[graded.method != "power_a4"]
    for frame in [none, none.drop(columns="sampler_trace")]:
        table = sampler_trace_table(frame)
        assert table.empty and list(table.columns) == SAMPLER_TRACE_COLUMNS


def test_budget_cuts_are_counted_against_each_methods_own_budget():
    graded = make_graded(n_problems=4, seeds=(0,), models=("toy",))
    methods = {
        **METHODS,
        "temp_0.7": {**METHODS["temp_0.7"], "max_new_tokens": 8},
    }  # greedy and power keep their samplers' default budgets (3072)
    budgets = {"greedy": [3072, 3072, 2000, 3072], "temp_0.7": [8, 5, 8, 8]}
    budgets["power_a4"] = [3072, 1, 2, 3]
    for method, values in budgets.items():
        graded.loc[graded["method"] == method, "token_budget"] = values
    table = accuracy_table(graded, methods, n_boot=100).set_index("method")
    assert table.loc["greedy", "n_budget_cut"] == 1
    assert table.loc["temp_0.7", "n_budget_cut"] == 1
    assert table.loc["power_a4", "n_budget_cut"] == 3
    # Rows that do not record a budget (older outputs) count no cuts.
    assert (accuracy_table(make_graded(), METHODS, n_boot=100)["n_budget_cut"] == 0).all()
