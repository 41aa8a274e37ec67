"""The AlpacaEval judge step: configured explicitly, refuses to run without its key."""

from __future__ import annotations

import subprocess

import pytest

from powersampling.errors import UserError
from powersampling.tasks import alpaca
from workflow_helpers import ROOT, copy_workflow, load_test_config, snakemake, write_config


def test_missing_key_stops_with_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with pytest.raises(UserError, match=r"API key in \$JUDGE_KEY"):
        alpaca.run_alpaca_eval_judge(
            tmp_path / "outputs.json", tmp_path / "out", annotator="a", api_key_env="JUDGE_KEY"
        )


def test_judge_runs_alpaca_eval_and_returns_its_leaderboard(monkeypatch, tmp_path):
    monkeypatch.setenv("JUDGE_KEY", "secret")
    monkeypatch.setattr(alpaca, "judge_command_available", lambda: True)
    calls = []

    def fake_alpaca_eval(command, **kwargs):
        calls.append(command)
        out = tmp_path / "out"
        out.mkdir()
        (out / "leaderboard.csv").write_text("model,win_rate\ntoy,0.1\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    leaderboard = alpaca.run_alpaca_eval_judge(
        tmp_path / "outputs.json",
        tmp_path / "out",
        annotator="weighted_alpaca_eval_gpt4_turbo",
        api_key_env="JUDGE_KEY",
        runner=fake_alpaca_eval,
    )
    assert leaderboard.read_text().startswith("model,win_rate")
    assert calls[0][:2] == ["alpaca_eval", "evaluate"]
    assert "weighted_alpaca_eval_gpt4_turbo" in calls[0]


def test_failed_judge_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JUDGE_KEY", "secret")
    monkeypatch.setattr(alpaca, "judge_command_available", lambda: True)

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 2, "", "quota exceeded")

    with pytest.raises(UserError, match="quota exceeded"):
        alpaca.run_alpaca_eval_judge(
            tmp_path / "o.json", tmp_path / "out", annotator="a", api_key_env="JUDGE_KEY",
            runner=failing,
        )  # fmt: skip


@pytest.mark.parametrize("judged", [False, True])
def test_judge_jobs_are_planned_only_when_configured(tmp_path, judged):
    workdir = copy_workflow(tmp_path / "wf")
    config = load_test_config()
    config["tasks"]["alpaca"] = {
        "kind": "alpaca",
        "source": str(ROOT / "tests/fixtures/alpaca_eval_sample.json"),
        "limit": 2,
    }
    config["experiments"][0]["tasks"] = ["arithmetic", "alpaca"]
    if judged:
        config["alpaca_eval_judge"] = {"annotator": "weighted_alpaca_eval_gpt4_turbo"}
    path = write_config(workdir, config)
    result = snakemake(workdir, "--configfile", str(path), "--dry-run")
    plan = result.stdout + result.stderr
    assert "export_alpaca_eval" in plan
    assert ("judge_alpaca_eval" in plan) == judged
