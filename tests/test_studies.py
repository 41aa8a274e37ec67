"""Toy-world studies: exact properties of their tables, and that the plots are written."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from powersampling.errors import UserError
from powersampling.stages.studies import toy_study
from powersampling.toy import studies
from powersampling.toy.enumerate import random_tiny_model

PROMPT, EOS = [0, 1], 2


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(3, seed=4, init_std=0.25)


def test_power_scales_gaps_by_alpha_and_temperature_does_not(model, tmp_path):
    table = studies.power_vs_temperature(model, PROMPT, [EOS], 3, alphas=[2.0, 4.0])
    assert set(table["alpha"]) == {2.0, 4.0}
    assert len(table) == 2 * 28  # 8 answers → 28 pairs per α
    assert np.allclose(table["gap_power"], table["alpha"] * table["gap_logp"], atol=1e-9)
    # token-level temperature is not a uniform rescaling of the gaps
    off = np.abs(table["gap_temperature"] - table["alpha"] * table["gap_logp"])
    assert off.max() > 0.5
    assert table["temperature_over_p"].std() > 0.1
    studies.plot_power_vs_temperature(table, tmp_path / "gaps.svg")
    assert (tmp_path / "gaps.svg").stat().st_size > 1000


def test_convergence_table(model, tmp_path):
    table = studies.convergence(
        model, PROMPT, [EOS], 4, alpha=2.0, block_sizes=[1, 4], steps=[0, 4, 64]
    )
    assert len(table) == 2 * 2 * 3
    one = table[(table["block_size"] == 4) & table["stop_at_eos"]]
    # zero steps with one block is plain temperature sampling; many steps reach π_α
    assert one["tv_to_power"].iloc[0] == pytest.approx(one["tv_temperature"].iloc[0])
    assert one["tv_to_power"].iloc[-1] < 1e-4
    assert np.all(np.diff(one["tv_to_power"]) < 0)
    kept = table[(table["block_size"] == 1) & ~table["stop_at_eos"]]
    stopped = table[(table["block_size"] == 1) & table["stop_at_eos"]]
    assert kept["tv_to_power"].iloc[-1] < 1e-3
    assert stopped["tv_to_power"].iloc[-1] > 0.05  # the stop-at-EOS rule leaves a bias
    studies.plot_convergence(table, tmp_path / "convergence.png")
    assert (tmp_path / "convergence.png").stat().st_size > 1000


def test_greedy_vs_power_table(model, tmp_path):
    table = studies.greedy_vs_power(model, [PROMPT, [1, 1, 0]], [EOS], 3, alphas=[2.0, 8.0])
    assert set(table["method"]) == {"greedy", "temperature", "power", "power_sampler", "mode"}
    for (_, _), sub in table.groupby(["prompt", "alpha"]):
        by = sub.set_index("method")
        assert by.loc["mode", "p_mode"] == 1.0
        assert by.loc["mode", "expected_logp"] == pytest.approx(by.loc["mode", "mode_logp"])
        # no method beats the most likely answer on expected log-likelihood
        assert (by["expected_logp"] <= by.loc["mode", "expected_logp"] + 1e-12).all()
    power = table[table["method"] == "power"].set_index(["prompt", "alpha"])["p_mode"]
    for prompt in [0, 1]:
        assert power[(prompt, 8.0)] > power[(prompt, 2.0)]  # sharper α → more mass on the mode
    studies.plot_greedy_vs_power(table, tmp_path / "greedy.pdf")
    assert (tmp_path / "greedy.pdf").stat().st_size > 1000


def test_every_study_is_registered_with_its_plot_and_caption():
    root = Path(__file__).resolve().parents[1]
    assert list(studies.STUDIES) == [
        "power_vs_temperature",
        "convergence",
        "greedy_vs_power",
        "frontier",
    ]
    for name, study in studies.STUDIES.items():
        assert study.name == name
        assert study.plot is getattr(studies, f"plot_{name}")
        caption = root / study.caption
        assert caption.is_file() and caption.read_text().strip(), study.caption


@pytest.mark.parametrize("name", list(studies.STUDIES))
def test_the_toy_study_stage_writes_its_table_and_figure(name, tmp_path):
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
        name, settings, seed=1, table_path=tmp_path / "t.parquet", plot_path=tmp_path / "f.svg"
    )
    assert not table.empty
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), table)
    assert (tmp_path / "f.svg").stat().st_size > 1000


def test_unknown_toy_study_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown study 'nope'"):
        toy_study("nope", {}, seed=0, table_path=tmp_path / "t", plot_path=tmp_path / "f")
