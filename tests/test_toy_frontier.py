"""The compute-frontier study: exact expected cost of the MH sampler, and the frontier table.

Toy model: the random Qwen2 of tests/tiny_qwen.py (vocabulary {0, 1, EOS=2}, answers of at
most 4 tokens: 31 answers), as in tests/test_power_exactness.py. Seeds are fixed, so the
statistical checks (at about 4 standard errors) are deterministic.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_qwen import CAP, EOS, N_CHAINS, PROMPT

from powersampling.samplers.power import PowerSampler
from powersampling.stages.studies import toy_study
from powersampling.toy import studies
from powersampling.toy.enumerate import (
    enumerate_answers,
    expected_tokens_decoded,
    power_distribution,
    proposal_distribution,
    proposal_lengths,
    random_tiny_model,
    sampler_distribution,
    total_variation,
)

# ------------------------------------------------------------ exact cost of the MH sampler


@pytest.mark.parametrize(
    ("alpha", "block_size", "steps", "stop_at_eos"),
    [
        (2.0, 1, 2, True),
        (2.0, 2, 3, True),
        (4.0, 4, 4, True),
        (2.0, 3, 1, True),
        (2.0, 1, 2, False),
    ],
)
def test_expected_tokens_decoded_matches_the_power_sampler(
    model, engine, alpha, block_size, steps, stop_at_eos
):
    sup = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1 / alpha)
    exact = expected_tokens_decoded(sup, alpha, block_size, steps, stop_at_eos=stop_at_eos)
    sampler = PowerSampler(
        engine,
        alpha=alpha,
        block_size=block_size,
        mcmc_steps=steps,
        max_new_tokens=CAP,
        stop_at_eos=stop_at_eos,
    )
    seeds = [1000 * block_size + 10 * steps + i for i in range(N_CHAINS)]
    out = sampler.sample([PROMPT] * N_CHAINS, None, chain_seeds=seeds)
    tokens = np.array([o["tokens_decoded"] for o in out])
    se = tokens.std(ddof=1) / np.sqrt(N_CHAINS)
    assert abs(tokens.mean() - exact) < 4 * se, (tokens.mean(), exact, se)


def test_cost_comes_with_the_same_distribution(model):
    sup = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=0.5)
    dist, tokens = sampler_distribution(sup, 2.0, 2, 3, with_cost=True)
    assert np.allclose(dist, sampler_distribution(sup, 2.0, 2, 3), atol=1e-12)
    blocks, per_block = sampler_distribution(sup, 2.0, 2, [3, 1], by_block=True, with_cost=True)
    assert blocks.shape == (2, len(sup)) and per_block.shape == (2,)
    assert per_block.sum() == pytest.approx(expected_tokens_decoded(sup, 2.0, 2, [3, 1]))
    # No MH steps and one block: a plain q-draw, whose cost is its expected length.
    q = proposal_distribution(sup)
    assert expected_tokens_decoded(sup, 2.0, CAP, 0) == pytest.approx(q @ sup.lengths)
    # One step from a q-draw costs the expected proposal length on top.
    assert expected_tokens_decoded(sup, 2.0, CAP, 1) == pytest.approx(
        q @ sup.lengths + q @ proposal_lengths(sup)
    )
    # A proposal decodes at least one token and at most the whole cap.
    assert np.all(proposal_lengths(sup) >= 1) and np.all(proposal_lengths(sup) <= CAP)


# ------------------------------------------------------------ the frontier table

ALPHA = 4.0
BLOCKS, STEPS = [1, 4], [0, 2, 8, 32]
PARTICLES, KAPPAS, RUNS = [1, 4, 32], [0.5, 1.0], 300


@pytest.fixture(scope="module")
def table(model):
    return studies.frontier(
        model,
        PROMPT,
        [EOS],
        CAP,
        alpha=ALPHA,
        block_sizes=BLOCKS,
        steps=STEPS,
        particles=PARTICLES,
        ess_thresholds=KAPPAS,
        runs=RUNS,
        seed=3,
    )


def test_frontier_table_structure(model, table):
    assert list(table.columns) == studies.FRONTIER_COLUMNS
    assert table["sampler"].value_counts().to_dict() == {
        "mh": len(BLOCKS) * len(STEPS),
        "smc": len(PARTICLES) * len(KAPPAS),
        "temperature": 1,
    }
    assert (table["alpha"] == ALPHA).all()
    exact = table[table["exact"]]
    assert set(exact["sampler"]) == {"mh", "temperature"}
    assert (exact["tv_se"] == 0).all() and (exact["tv_noise"] == 0).all()
    mh, smc = table[table["sampler"] == "mh"], table[table["sampler"] == "smc"]
    assert mh["particles"].isna().all() and mh["ess_threshold"].isna().all()
    assert smc["block_size"].isna().all() and smc["mcmc_steps"].isna().all()
    assert (smc["runs"] == RUNS).all() and (smc["tv_se"] > 0).all()
    assert table["tv_to_power"].between(0, 1).all()
    # More MH steps cost more tokens; N particles decode about N times one answer's length.
    for _, sub in mh.groupby("block_size"):
        assert np.all(np.diff(sub.sort_values("mcmc_steps")["tokens_decoded"]) > 0)
    temp = table[table["sampler"] == "temperature"].iloc[0]
    for row in smc.itertuples():
        assert row.tokens_decoded == pytest.approx(row.particles * temp.tokens_decoded, rel=0.15)
    # Ẑ is unbiased (exactly with κ = 1, asymptotically with κ < 1): mean Ẑ/Z near 1,
    # within 4 standard errors of the noisiest case, N = 1 (importance sampling from q,
    # Var(Ẑ/Z) = χ²(π‖q) = Σ π²/q − 1).
    sup = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1 / ALPHA)
    pi, q = power_distribution(sup, ALPHA), proposal_distribution(sup)
    se_one = np.sqrt((np.sum(pi**2 / q) - 1) / RUNS)
    assert (smc["z_ratio"] - 1).abs().max() < 4 * se_one


def test_exact_rows_reproduce_convergence(model, table):
    conv = studies.convergence(
        model, PROMPT, [EOS], CAP, alpha=ALPHA, block_sizes=BLOCKS, steps=STEPS
    )
    conv = conv[conv["stop_at_eos"]].set_index(["block_size", "mcmc_steps"])["tv_to_power"]
    mh = table[table["sampler"] == "mh"]
    for row in mh.itertuples():
        assert row.tv_to_power == pytest.approx(conv[(row.block_size, row.mcmc_steps)], abs=1e-12)
    temp = table[table["sampler"] == "temperature"].iloc[0]
    sup = enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1 / ALPHA)
    q, pi = proposal_distribution(sup), power_distribution(sup, ALPHA)
    assert temp.tv_to_power == pytest.approx(total_variation(q, pi))
    assert temp.tv_to_power == pytest.approx(
        mh[(mh["block_size"] == CAP) & (mh["mcmc_steps"] == 0)]["tv_to_power"].iloc[0]
    )
    assert temp.tokens_decoded == pytest.approx(q @ sup.lengths)


def test_smc_approaches_pi_with_more_particles(table):
    temp = table[table["sampler"] == "temperature"].iloc[0]
    smc = table[table["sampler"] == "smc"]
    for _, sub in smc.groupby("ess_threshold"):
        sub = sub.sort_values("particles")
        one, most = sub.iloc[0], sub.iloc[-1]
        # N = 1: the output is a plain q draw, so its law is q.
        assert abs(one.tv_to_power - temp.tv_to_power) < 3 * one.tv_se + 1e-9
        assert one.resamples == 0
        assert most.tv_to_power < one.tv_to_power - 4 * (one.tv_se + most.tv_se)
        assert most.tv_to_power < 0.1


def test_plot_frontier_writes_an_svg(table, tmp_path):
    studies.plot_frontier(table, tmp_path / "frontier.svg")
    text = (tmp_path / "frontier.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "temperature 1/α" in text


def test_frontier_is_registered_and_runs_through_its_stage(tmp_path):
    root = Path(__file__).resolve().parents[1]
    study = studies.STUDIES["frontier"]
    assert study.plot is studies.plot_frontier
    assert (root / study.caption).read_text().strip()
    settings = {
        "vocab_size": 3,
        "cap": 3,
        "alphas": [2.0, 4.0],
        "block_sizes": [1, 3],
        "mcmc_steps": [0, 2],
        "prompts": 2,
        "init_std": 0.25,
        "smc_particles": [1, 4],
        "smc_ess_thresholds": [0.5],
        "smc_runs": 20,
    }
    table = toy_study(
        "frontier",
        settings,
        seed=1,
        table_path=tmp_path / "t.parquet",
        plot_path=tmp_path / "f.svg",
    )
    assert len(table) == 1 + 2 * 2 + 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)
    assert (tmp_path / "f.svg").stat().st_size > 1000
    # The same seed gives the same table (SMC's chain seeds derive from it).
    again = study.compute(
        random_tiny_model(3, seed=1, init_std=0.25), [[0, 1]], [2], settings, seed=5
    )
    same = study.compute(
        random_tiny_model(3, seed=1, init_std=0.25), [[0, 1]], [2], settings, seed=5
    )
    pd.testing.assert_frame_equal(again, same)
