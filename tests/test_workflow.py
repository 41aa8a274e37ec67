"""The whole DAG on a test-sized toy world, in a temporary copy of the workflow."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from powersampling.io import GENERATION_SCHEMA, GRADED_SCHEMA
from workflow_helpers import copy_workflow, load_test_config, snakemake, write_config

pytestmark = pytest.mark.slow

GENERATIONS = "results/generations/arithmetic/{model}/{method}/shard{shard:03d}.parquet"
# Each method's seeds share its generation jobs (one file per shard holds them all).
# power_2 also runs seeds 2 and 3: the DPS study's pool of 4 trajectories.
SEEDS = {
    "greedy": [0],
    "temp_1.0": [0, 1],
    "temp_0.5": [0, 1],
    "power_2": [0, 1, 2, 3],
    "smc_2": [0, 1],
}
DPS = "dps_gbdt"  # answers only the questions its controller did not learn from
# The reliability study's sparse twin: greedy once, temperature 0.5 twice.
SPARSE, SPARSE_SEEDS = "toy_moe", {"greedy": [0], "temp_0.5": [0, 1]}
# The test config's truncation sweep: blocks 0 and 3 of the toy model's 4.
TRUNCATED = "toy-L1+last"
TRUNCATED_METHODS = ["greedy", "power_2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete run of the test config; tests below read its outputs."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = write_config(workdir, load_test_config())
    snakemake(workdir, "--configfile", str(config))
    snakemake(workdir, "--configfile", str(config), "--report", "reports/report.html")
    return workdir, config


def copy_of(finished_run, dest: Path) -> tuple[Path, Path]:
    """A copy of the finished run (outputs, timestamps and Snakemake's records) to change."""
    workdir, config = finished_run
    shutil.copytree(workdir, dest, symlinks=True)
    return dest, dest / config.relative_to(workdir)


def shard_files(workdir: Path, stage: str) -> list[Path]:
    return sorted((workdir / "results" / stage).rglob("shard*.parquet"))


def test_every_shard_is_generated_and_graded(finished_run):
    workdir, _ = finished_run
    runs = [("toy", m) for m in [*SEEDS, DPS]] + [(TRUNCATED, m) for m in TRUNCATED_METHODS]
    runs += [(SPARSE, m) for m in SPARSE_SEEDS]
    expected = {GENERATIONS.format(model=m, method=x, shard=i) for m, x in runs for i in range(2)}
    found = {str(p.relative_to(workdir)) for p in shard_files(workdir, "generations")}
    assert found == expected
    assert len(shard_files(workdir, "graded")) == len(expected)
    for path in shard_files(workdir, "generations"):
        assert pq.read_schema(path).equals(GENERATION_SCHEMA, check_metadata=False)
        frame = pd.read_parquet(path)
        method = frame["method"].iloc[0] if len(frame) else DPS
        if method == DPS:
            continue  # test_dps_answers_the_held_out_questions_as_its_replay_does
        model = frame["model"].iloc[0]
        seeds = {"toy": SEEDS, SPARSE: SPARSE_SEEDS}.get(model, {}).get(method, [0])
        assert sorted(frame["seed"].unique()) == seeds
        assert (frame.groupby("seed").size() == 12).all()
        assert (frame["n_new_tokens"] >= 1).all()
        assert frame["finish_reason"].isin(["eos", "length"]).all()
        assert frame["logp_sum"].le(0).all()
        assert frame["shard_decode_time_s"].gt(0).all()
        assert (frame.groupby("seed")["shard_decode_time_s"].nunique() == 1).all()
    for path in shard_files(workdir, "graded"):
        assert pq.read_schema(path).equals(GRADED_SCHEMA, check_metadata=False)


def test_shards_partition_the_problems(finished_run):
    workdir, _ = finished_run
    data = pd.read_parquet(workdir / "data/arithmetic.parquet")
    assert len(data) == 24
    for method, seeds in SEEDS.items():
        rows = pd.concat(
            pd.read_parquet(workdir / GENERATIONS.format(model="toy", method=method, shard=i))
            for i in range(2)
        )
        for seed in seeds:
            ids = rows.loc[rows["seed"] == seed, "problem_id"]
            assert sorted(ids) == sorted(data["problem_id"])


def test_outputs_get_the_mode_the_umask_gives(finished_run):
    """Atomic writes go through private temporary files; what lands is group-readable
    whenever the umask lets any new file be (the run inherits this process's umask)."""
    workdir, _ = finished_run
    umask = os.umask(0o022)
    os.umask(umask)
    outputs = [
        workdir / "data/arithmetic.parquet",
        *shard_files(workdir, "generations"),
        *shard_files(workdir, "graded"),
        *(workdir / "results/tables").iterdir(),
        *(workdir / "results/plots").iterdir(),
        workdir / "results/config.yaml",
    ]
    for path in outputs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    model = workdir / "results/models/toy"
    assert stat.S_IMODE(model.stat().st_mode) == 0o777 & ~umask


def test_toy_model_is_a_hugging_face_model_dir(finished_run):
    workdir, _ = finished_run
    model_dir = workdir / "results/models/toy"
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()


def test_accuracy_table_has_a_row_per_method_with_cis(finished_run):
    workdir, _ = finished_run
    table = pd.read_parquet(workdir / "results/tables/accuracy.parquet")
    assert sorted(zip(table["model"], table["method"], strict=True)) == sorted(
        [("toy", m) for m in [*SEEDS, DPS]]
        + [(TRUNCATED, m) for m in TRUNCATED_METHODS]
        + [(SPARSE, m) for m in SPARSE_SEEDS]
    )
    assert (table["ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["ci_high"]).all()
    # Time per answer is the shards' decoding time over their answers, for every sampler.
    per_answer = table["time_per_answer_s"] * table["n_samples"]
    assert list(per_answer) == pytest.approx(list(table["decode_time_s"]))
    assert table["time_per_answer_s"].gt(0).all()
    graded = pd.concat(pd.read_parquet(p) for p in shard_files(workdir, "graded"))
    by_run = graded.groupby(["model", "method"])["correct"].mean()
    for _, row in table.iterrows():
        assert row["accuracy"] == pytest.approx(by_run[row["model"], row["method"]])
    csv = pd.read_csv(workdir / "results/tables/accuracy.csv")
    assert list(csv["method"]) == list(table["method"])


def test_report_is_self_contained_and_has_every_figure(finished_run):
    workdir, _ = finished_run
    report = (workdir / "reports/report.html").read_text()
    assert len(report) > 50_000
    for figure in (workdir / "results/plots").glob("*.svg"):
        assert figure.stat().st_size > 1000
        assert figure.name in report
    assert "accuracy.html" in report
    # captions are rendered with the config
    assert "bootstrap" in report


def test_rerun_with_nothing_changed_does_nothing(finished_run):
    workdir, config = finished_run
    result = snakemake(workdir, "--configfile", str(config), "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_method_reruns_only_its_shards(finished_run, tmp_path):
    workdir, _ = copy_of(finished_run, tmp_path / "changed")
    before = {p: p.stat().st_mtime_ns for p in shard_files(workdir, "generations")}
    changed = load_test_config()
    changed["methods"]["temp_0.5"]["T"] = 0.6
    config = write_config(workdir, changed, name="changed.yaml")
    snakemake(workdir, "--configfile", str(config))
    rerun = {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    assert rerun and all("/temp_0.5/" in str(p) for p in rerun)
    assert len(rerun) == 4  # 2 shards of the dense and of the sparse model, both seeds each
    for path in rerun:
        assert (pd.read_parquet(path)["temperature"] == 0.6).all()


def test_same_config_gives_same_outputs(finished_run, tmp_path):
    workdir, _ = finished_run
    again = copy_workflow(tmp_path / "again")
    config = write_config(again, load_test_config())
    target = GENERATIONS.format(model="toy", method="temp_1.0", shard=1)
    # targets go first: --configfile takes every value after it
    snakemake(again, target, "--configfile", str(config))
    first = pd.read_parquet(workdir / target)
    second = pd.read_parquet(again / target)
    assert list(first["completion"]) == list(second["completion"])
    assert (first["logp_sum"] == second["logp_sum"]).all()


def test_bad_config_stops_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path / "bad")
    config = load_test_config()
    config["methods"]["greedy"]["max_new_tokens"] = 0
    path = write_config(workdir, config)
    result = snakemake(workdir, "--configfile", str(path), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "methods.greedy.max_new_tokens" in output
    assert "Traceback" not in output
    assert not (workdir / "results").exists() and not (workdir / "data").exists()


def test_config_values_override_the_default_config(tmp_path):
    """`--config key=value` changes keys of config/config.yaml (nested ones merged)."""
    workdir = copy_workflow(tmp_path / "override")
    snakemake(workdir, "results/config.yaml", "--config", "seed=3", "generation={batch_size: 8}")
    snapshot = yaml.safe_load((workdir / "results/config.yaml").read_text())
    default = yaml.safe_load((workdir / "config/config.yaml").read_text())
    assert snapshot["seed"] == 3
    # Keys not given keep their defaults.
    assert snapshot["generation"] == {
        "batch_size": 8, "progress": True, "device_memory_gib": None, "plan_prompt_tokens": 512
    }  # fmt: skip
    assert snapshot["methods"] == default["methods"] and snapshot["tasks"].keys() == {
        *default["tasks"]
    }


def test_config_values_override_a_configfile(tmp_path):
    """`--configfile` replaces the default config; `--config` then overrides its keys."""
    workdir = copy_workflow(tmp_path / "override_file")
    path = write_config(workdir, load_test_config())
    snakemake(
        workdir, "results/config.yaml", "--configfile", str(path), "--config", "seed=5",
        "toy={train: {steps: 7}}",
    )  # fmt: skip
    snapshot = yaml.safe_load((workdir / "results/config.yaml").read_text())
    assert snapshot["seed"] == 5
    assert snapshot["toy"]["train"] == {**load_test_config()["toy"]["train"], "steps": 7}
    assert snapshot["methods"] == load_test_config()["methods"]


def test_a_budget_no_prompt_fits_is_refused_before_any_job(tmp_path):
    """The toy model's context is known from the config: 100,000 new tokens cannot fit."""
    workdir = copy_workflow(tmp_path / "huge")
    config = load_test_config()
    config["methods"]["greedy"]["max_new_tokens"] = 100_000
    result = snakemake(workdir, "--configfile", str(write_config(workdir, config)), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "methods.greedy.max_new_tokens: 100000 new tokens" in output
    assert "context of model 'toy' (384 tokens" in output and "Traceback" not in output
    assert not (workdir / "results").exists() and not (workdir / "data").exists()


def test_rows_whose_prompt_leaves_less_room_get_the_budget_that_fits(finished_run, tmp_path):
    """A budget that fits the context alone but not with the prompts passes validation;
    the generation job gives each row min(budget, context - prompt), records it and says
    how many rows it cut (a prompt leaving no room at all is refused: test_generation)."""
    workdir, _ = copy_of(finished_run, tmp_path / "too_long")
    config = load_test_config()
    config["methods"]["greedy"]["max_new_tokens"] = 378  # + any real prompt > 384
    path = write_config(workdir, config, name="too_long.yaml")
    target = GENERATIONS.format(model="toy", method="greedy", shard=0)
    (workdir / target).unlink()
    snakemake(workdir, target, "--configfile", str(path))
    log = (workdir / "logs/generate/arithmetic/toy/greedy/shard000.log").read_text()
    assert "12 of 12 prompts leave less than 378 new tokens in toy's context" in log
    rows = pd.read_parquet(workdir / target)
    assert (rows["token_budget"] == 384 - rows["n_prompt_tokens"]).all()
    assert (rows["n_new_tokens"] <= rows["token_budget"]).all()


def test_power_sampling_rows_carry_their_mcmc_record(finished_run):
    workdir, _ = finished_run
    power = pd.concat(
        pd.read_parquet(workdir / GENERATIONS.format(model="toy", method="power_2", shard=i))
        for i in range(2)
    )
    assert power["acceptance_rate"].between(0, 1).all()
    assert (power["proposals"] >= 2).all()  # at least mcmc_steps per block
    assert (power["tokens_decoded"] >= power["n_new_tokens"]).all()
    assert power["sampler_trace"].map(len).ge(1).all()
    # A chain's lifetime runs within its shard's decoding time (chains overlap).
    assert power["chain_lifetime_s"].between(0, power["shard_decode_time_s"]).all()
    greedy = pd.read_parquet(workdir / GENERATIONS.format(model="toy", method="greedy", shard=0))
    assert greedy["acceptance_rate"].isna().all() and greedy["sampler_trace"].isna().all()
    assert greedy["chain_lifetime_s"].isna().all()
    acceptance = pd.read_parquet(workdir / "results/tables/acceptance_by_block.parquet")
    assert set(acceptance["method"]) == {"power_2"}


def test_exact_toy_studies_are_in_the_results(finished_run):
    workdir, _ = finished_run
    gaps = pd.read_parquet(workdir / "results/studies/power_vs_temperature.parquet")
    # under pi_alpha log-probability gaps scale by exactly alpha
    assert gaps["power_over_p"].dropna().sub(gaps["alpha"]).abs().max() < 1e-6
    convergence = pd.read_parquet(workdir / "results/studies/convergence.parquet")
    assert set(convergence["block_size"]) == {1, 3}


def test_truncated_models_run_beside_the_full_one(finished_run):
    workdir, _ = finished_run
    assert not (workdir / f"results/models/{TRUNCATED}").exists()  # it reads toy's weights
    log = (workdir / f"logs/generate/arithmetic/{TRUNCATED}/greedy/shard000.log").read_text()
    assert "kept blocks [0, 3] of toy" in log
    table = pd.read_parquet(workdir / "results/tables/truncation.parquet")
    assert set(table["method"]) == set(TRUNCATED_METHODS)
    kept = table.set_index(["model", "method"])["layers_kept"]
    assert kept[TRUNCATED, "greedy"] == 1 and kept["toy", "greedy"] == 4
    lens_beside = pd.read_parquet(workdir / "results/tables/lens_vs_truncation.parquet")
    assert set(lens_beside["lens_layer"]) == {0}  # the truncation stops after block 0


def test_logit_lens_reads_every_layer_and_ends_at_the_output(finished_run):
    workdir, _ = finished_run
    rows = pd.read_parquet(workdir / "results/logit_lens/arithmetic/toy/shard000.parquet")
    assert set(rows["layer"]) == {0, 1, 2, 3}
    assert set(rows["position"]) <= {"last_prompt", "answer"}
    assert rows.loc[rows["layer"] == 3, "kl"].abs().max() < 1e-6
    assert rows.loc[rows["layer"] == 3, "top1_agree"].eq(1).all()
    table = pd.read_parquet(workdir / "results/tables/logit_lens.parquet")
    assert table["n_problems"].max() == 24  # both shards
    assert (table["kl_ci_low"] <= table["kl"] + 1e-12).all()


def test_patching_covers_every_layer_and_position_and_counts_pairs(finished_run):
    workdir, _ = finished_run
    rows = pd.concat(
        pd.read_parquet(path) for path in (workdir / "results/patching/pairs/toy").glob("*.parquet")
    )
    counts = pd.read_csv(workdir / "results/tables/patching_pairs.csv")
    n = counts.set_index("reason")["n"]
    assert (
        n["used"]
        == rows["pair_id"].nunique()
        == n["pairs"] - n["different_lengths"] - n["same_first_answer_token"]
    )
    assert {"same_answer", "out_of_range"} <= set(counts["reason"])
    for _, pair in rows.groupby("pair_id"):
        n_positions = pair["position"].max() + 1
        assert len(pair) == 4 * n_positions  # every (layer, position)
        last = pair[(pair["layer"] == 3) & (pair["position"] == n_positions - 1)]
        # The answer position patched at the last block is the clean run's output there
        # (the effect is 1 up to float32 rounding over a small clean-corrupted difference).
        assert last["kl"].iloc[0] < 1e-5
    by_layer = pd.read_parquet(workdir / "results/tables/patching_by_layer.parquet")
    assert sorted(by_layer["layer"]) == [0, 1, 2, 3]


def test_dps_answers_the_held_out_questions_as_its_replay_does(finished_run):
    workdir, _ = finished_run
    pool = pd.read_parquet(workdir / "results/dps/arithmetic/toy/pool.parquet")
    assert len(pool) == 24 * 4 and sorted(pool["trajectory"].unique()) == [0, 1, 2, 3]
    split = pool.drop_duplicates("problem_id").set_index("problem_id")["split"]
    assert (split.value_counts() == 12).all()
    online = pd.concat(
        pd.read_parquet(workdir / GENERATIONS.format(model="toy", method=DPS, shard=i))
        for i in range(2)
    )
    assert sorted(online["problem_id"]) == sorted(split[split == "test"].index)
    table = pd.read_csv(workdir / "results/tables/dps.csv").set_index("method")
    expected = {"fixed_k2", "fixed_k4", "esc", "ac", "oracle", "dps_gbdt", "dps_mlp_h",
                "dps_mlp_hq"}  # fmt: skip
    assert expected <= set(table.index)
    online_row = table[table["kind"] == "online"].iloc[0]
    assert online_row["agrees_with_replay"] == 1.0
    assert online_row["n_questions"] == 12
    for name in ["dps_controllers", "dps_calibration", "dps_importance", "dps_sweep"]:
        assert (workdir / f"results/tables/{name}.csv").is_file()
    for name in ["dps_pareto", "dps_calibration", "dps_importance"]:
        assert (workdir / f"results/plots/{name}.svg").is_file()


def test_retraining_a_controller_reruns_exactly_its_dps_shards(finished_run, tmp_path):
    workdir, config = copy_of(finished_run, tmp_path / "retrained")
    before = {p: p.stat().st_mtime_ns for p in shard_files(workdir, "generations")}
    controller = "results/dps/arithmetic/toy/controllers/gbdt.pkl"
    snakemake(workdir, "--configfile", str(config), "--forcerun", controller)
    rerun = {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    assert rerun == {workdir / GENERATIONS.format(model="toy", method=DPS, shard=i) for i in (0, 1)}


def test_reliability_compares_the_sparse_twin_with_the_dense_model(finished_run):
    workdir, _ = finished_run
    config = yaml.safe_load((workdir / "results/models/toy_moe/config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_experts_per_tok"] == 2
    table = pd.read_csv(workdir / "results/tables/reliability.csv")
    assert sorted(zip(table["model"], table["method"], table["n_runs"], strict=True)) == [
        ("toy", "greedy", 1), ("toy", "temp_0.5", 2),
        ("toy_moe", "greedy", 1), ("toy_moe", "temp_0.5", 2),
    ]  # fmt: skip
    assert table["accuracy_lenient"].ge(table["accuracy_strict"]).all()
    failures = pd.read_csv(workdir / "results/tables/failures.csv")
    rates = failures.groupby(["model", "method"])["rate"].sum()
    wrong = 1 - table.set_index(["model", "method"])["accuracy_strict"]
    assert rates.sort_index().to_numpy() == pytest.approx(wrong.sort_index().to_numpy())
    rows = pd.read_parquet(workdir / GENERATIONS.format(model=SPARSE, method="temp_0.5", shard=0))
    sampling = {json.dumps(json.loads(s), sort_keys=True) for s in rows["sampling"]}
    assert sampling == {
        json.dumps(
            {
                "sampler": "temperature",
                "T": 0.5,
                "top_k": None,
                "max_new_tokens": 24,
                "generation_config": "ignored",
            },
            sort_keys=True,
        )
    }
    for name in ["reliability", "reliability_confidence", "reliability_calibration", "failures"]:
        assert (workdir / f"results/plots/{name}.svg").is_file()
