"""Config validation: defaults are filled in and every problem names its key."""

from pathlib import Path

import pytest
import yaml

from powersampling.config import (
    load_config,
    n_shards,
    planned_runs,
    run_seeds,
    shard_rows,
    validate_config,
    with_command_line_values,
)
from powersampling.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


SHIPPED_CONFIGS = sorted(
    p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml"
)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "config" / name, SCHEMA)
    assert planned_runs(config)


def test_defaults_are_filled_in():
    config = validate_config(default_config(), SCHEMA)
    assert config["report"]["ci_level"] == 0.95
    assert config["resources"]["gpu"] == 0
    # Runtimes: the time plan's prediction x 2, at least 60 and at most 2,880 minutes.
    runtimes = ("generation_runtime_min", "runtime_safety_factor", "max_runtime_min")
    assert [config["resources"][k] for k in runtimes] == [60, 2, 2880]
    assert config["calibration"] == {"problems": 2, "min_timed_s": 5.0, "answer_tokens": None}
    assert config["models"]["toy"]["dtype"] == "auto"
    assert config["tasks"]["arithmetic"]["source"] is None


def test_validation_does_not_modify_its_input():
    raw = default_config()
    validate_config(raw, SCHEMA)
    assert raw == default_config()


def _error_for(mutate) -> str:
    config = default_config()
    mutate(config)
    with pytest.raises(UserError) as info:
        validate_config(config, SCHEMA)
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(bogus=1), "<top level>: unknown key(s) 'bogus'"),
        (lambda c: c["methods"]["greedy"].update(T=0.5), "methods.greedy: unknown key(s) 'T'"),
        (lambda c: c["methods"]["temp_1.0"].update(T=-1), "methods.temp_1.0.T"),
        (lambda c: c["methods"]["temp_1.0"].pop("T"), "'T' is a required property"),
        (lambda c: c["methods"]["greedy"].update(sampler="beam"), "methods.greedy.sampler"),
        (lambda c: c["tasks"]["arithmetic"].update(limit=0), "tasks.arithmetic.limit"),
        (lambda c: c["tasks"]["arithmetic"].update(kind="mnist"), "tasks.arithmetic.kind"),
        (lambda c: c["tasks"]["arithmetic"].pop("limit"), "tasks.arithmetic.limit"),
        (lambda c: c.update(tasks={}), "tasks: {} should be non-empty"),
        (lambda c: c["resources"].update(gpu="one"), "resources.gpu"),
        (lambda c: c["resources"].update(runtime_safety_factor=0.5), "resources.runtime_safety"),
        (lambda c: c["resources"].update(max_runtime_min=0), "resources.max_runtime_min"),
        (lambda c: c.update(calibration={"problems": 0}), "calibration.problems"),
        (lambda c: c.update(calibration={"repeats": 3}), "calibration: unknown key(s) 'repeats'"),
        (lambda c: c["toy"]["train"].update(steps=0), "toy.train.steps"),
        (
            lambda c: c["experiments"][0].update(methods=["beam_search"]),
            "experiments.0.methods: 'beam_search' is not defined under 'methods'",
        ),
        (
            lambda c: c["models"].update(missing={"source": "/nonexistent/model"}),
            "models.missing.source: no model directory at /nonexistent/model",
        ),
        (
            lambda c: c["models"]["toy"].update(source="./no/such/dir"),
            "models.toy.source: no model directory",
        ),
        (
            lambda c: c["models"].update(r={"source": "rehearsal"}),
            "models.r.rehearsal: a rehearsal model needs an architecture (one of ",
        ),
        (
            lambda c: c["models"].update(
                r={"source": "rehearsal", "rehearsal": {"architecture": "gpt-5"}}
            ),
            "models.r.rehearsal.architecture: unknown 'gpt-5' (known: qwen2.5-math-1.5b, ",
        ),
        (
            lambda c: c["models"].update(
                hub={"source": "org/name", "rehearsal": {"architecture": "qwen2.5-7b"}}
            ),
            "models.hub.rehearsal: only models with source 'rehearsal' take it",
        ),
        (
            lambda c: c["models"]["toy"].update(chat_template=["arithmetic", "math"]),
            "models.toy.chat_template: 'math' is not a task of this config",
        ),
        (
            lambda c: c["models"]["toy"].update(chat_template="yes"),
            "models.toy.chat_template",
        ),
        (lambda c: c.update(model_cache=""), "model_cache"),
        # Dynamic power sampling
        (
            lambda c: c["studies"]["dps"].update(pool="temp_1.0"),
            "studies.dps.pool: 'temp_1.0' is not a power-sampling method",
        ),
        (
            lambda c: c["studies"]["dps"].update(k_start=3),
            "studies.dps: k_start 3 must be below k_max 8, which k_step 2 must reach from it",
        ),
        (
            lambda c: c["studies"]["dps"].update(controllers=["gbdt"]),
            "methods.dps_mlp_hq.controller: 'mlp_hq' is not one of studies.dps.controllers",
        ),
        (
            lambda c: c["studies"]["dps"].update(controllers=["cart"]),
            "studies.dps.controllers.0",
        ),
        (
            lambda c: c["studies"].pop("dps"),
            "methods.dps_mlp_hq: a dps method needs the controllers of studies.dps",
        ),
        (
            lambda c: c["experiments"][-1].update(tasks=["binding"]),
            "experiments.3: dps runs on the tasks of studies.dps only ('binding'",
        ),
        (lambda c: c["methods"]["dps_mlp_hq"].update(tau=1.5), "methods.dps_mlp_hq.tau"),
        (
            lambda c: c["studies"]["dps"].update(models=["nope"]),
            "studies.dps.models: 'nope' is not defined under 'models'",
        ),
        # Temperature reliability, quantized models
        (
            lambda c: c["studies"].update(
                reliability={"tasks": ["arithmetic"], "models": ["toy"], "methods": ["hot"]}
            ),
            "studies.reliability.methods: 'hot' is not defined under 'methods'",
        ),
        (
            lambda c: c["studies"].update(
                reliability={"tasks": ["arithmetic"], "models": ["toy"], "methods": ["dps_mlp_hq"]}
            ),
            "studies.reliability.methods: 'dps_mlp_hq' is a dps method",
        ),
        (
            lambda c: (c.update(device="cpu"), c["models"]["toy"].update(quantization="4bit")),
            "models.toy.quantization: 4-bit loading needs a CUDA GPU, and device is cpu",
        ),
        (lambda c: c["models"]["toy"].update(quantization="8bit"), "models.toy.quantization"),
        (
            lambda c: (
                c.update(experiments=[]),
                c["studies"].pop("dps"),
                c["methods"].pop("dps_mlp_hq"),
            ),
            "experiments: no runs (no experiment, and no study that adds runs)",
        ),
    ],
)
def test_bad_configs_name_the_key(mutate, expected):
    assert expected in _error_for(mutate)


def test_all_problems_are_reported_at_once():
    def mutate(c):
        c["methods"]["greedy"]["foo"] = 1
        c["tasks"]["arithmetic"]["limit"] = -3

    message = _error_for(mutate)
    assert "methods.greedy" in message and "tasks.arithmetic.limit" in message


def test_planning_counts_shards_without_reading_data():
    config = validate_config(default_config(), SCHEMA)
    assert n_shards(config, "arithmetic") == 1
    assert shard_rows(config, "arithmetic", 0) == (0, 200)
    with pytest.raises(UserError, match="shard 1 of task arithmetic has no problems"):
        shard_rows(config, "arithmetic", 1)
    config["tasks"]["arithmetic"]["shard_size"] = 100
    assert shard_rows(config, "arithmetic", 1) == (100, 200)
    runs = planned_runs(config)
    # greedy: 2 tasks x 1 seed; two temperatures, power and smc: 2 tasks x 4 seeds each;
    # two truncations x three methods on binding, 1 seed; dps on arithmetic, 1 seed; and
    # the DPS pool: power on arithmetic, seeds 4-7 beyond those asked for
    assert len(runs) == 2 + 4 * 2 * 4 + 2 * 3 + 1 + 4
    assert len(set(runs)) == len(runs)
    # A method's seeds share its jobs: one per (task, model, method) and shard.
    seeds = run_seeds(config)
    assert len(seeds) == 2 * 5 + 2 * 3 + 1
    assert seeds["binding", "toy", "greedy"] == [0]
    assert seeds["binding", "toy", "power_4"] == [0, 1, 2, 3]
    assert seeds["arithmetic", "toy", "power_4"] == list(range(8))


def test_command_line_values_are_typed_and_merged():
    """Snakemake hands nested --config values over as strings; they are read as YAML."""
    config = {"seed": 0, "generation": {"batch_size": 64, "progress": True}, "name": "x"}
    values = {"seed": 3, "generation": {"batch_size": "8", "progress": "false"}, "name": "08"}
    merged = with_command_line_values(config, values)
    assert merged == {"seed": 3, "generation": {"batch_size": 8, "progress": False}, "name": "08"}
    assert config["generation"]["batch_size"] == 64  # the input is left alone
    assert with_command_line_values(config, {"generation": {"note": "a: b"}})["generation"] == {
        "batch_size": 64,
        "progress": True,
        "note": "a: b",  # not a scalar in YAML: kept as given
    }


def test_a_budget_that_cannot_fit_the_toy_context_is_refused():
    def mutate(c):
        c["methods"]["greedy"]["max_new_tokens"] = 1_000_000_000

    assert (
        "methods.greedy.max_new_tokens: 1000000000 new tokens and a prompt cannot fit the "
        "context of model 'toy' (384 tokens" in _error_for(mutate)
    )

    def wider(c):  # a toy model with a longer context takes the same budget
        c["methods"]["greedy"]["max_new_tokens"] = 300
        c["toy"]["model_shape"] = {"max_position_embeddings": 512}

    config = default_config()
    wider(config)
    validate_config(config, SCHEMA)


def test_a_budget_is_checked_against_a_local_models_config(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"text_config": {"max_position_embeddings": 64}}')
    config = default_config()
    config["models"]["local"] = {"source": str(model_dir)}
    config["experiments"].append(
        {"tasks": ["arithmetic"], "models": ["local"], "methods": ["greedy"]}
    )
    config["methods"]["greedy"]["max_new_tokens"] = 64
    with pytest.raises(UserError, match="context of model 'local' \\(64 tokens"):
        validate_config(config, SCHEMA)
    config["methods"]["greedy"]["max_new_tokens"] = 63
    validate_config(config, SCHEMA)
    config["models"]["local"] = {"source": "org/model"}  # a hub id: checked by the job
    config["methods"]["greedy"]["max_new_tokens"] = 10**9
    config["experiments"] = config["experiments"][-1:]
    validate_config(config, SCHEMA)


def test_paper_config_samples_and_prompts_as_the_published_runs_did():
    """generate() without top_k samples from the top 50 tokens; Phi-3.5 got the chat
    template for MATH500 only and HumanEval's instruct wording."""
    config = load_config(ROOT / "config" / "paper.yaml", SCHEMA)
    methods = config["methods"]
    assert methods["base"]["top_k"] == methods["low_temperature"]["top_k"] == 50
    assert methods["power"]["proposal_top_k"] == 50
    phi = config["models"]["phi-3.5-mini-instruct"]
    assert phi["chat_template"] == ["math500"] and phi["instruct"] is True
    for name in ["qwen2.5-math-7b", "qwen2.5-7b"]:
        model = config["models"][name]
        assert model["chat_template"] is False and model["instruct"] is False


def test_rehearsal_config_has_the_paper_configs_structure():
    paper = load_config(ROOT / "config" / "paper.yaml", SCHEMA)
    rehearsal = load_config(ROOT / "config" / "rehearsal.yaml", SCHEMA)
    assert rehearsal["tasks"].keys() == paper["tasks"].keys()
    assert rehearsal["models"].keys() == paper["models"].keys()
    assert rehearsal["methods"].keys() == paper["methods"].keys()
    for name, method in paper["methods"].items():
        kept = {
            k: v
            for k, v in method.items()
            if k not in ("max_new_tokens", "block_size", "mcmc_steps")
        }
        assert kept.items() <= rehearsal["methods"][name].items(), name
    for name, model in paper["models"].items():
        built = rehearsal["models"][name]
        assert built["rehearsal"]["architecture"] == name
        assert (built["chat_template"], built["instruct"]) == (
            model["chat_template"],
            model["instruct"],
        )
    assert [e["tasks"] for e in rehearsal["experiments"]] == [
        e["tasks"] for e in paper["experiments"]
    ]


def _with_truncations(layers, keep_last=True, **extra):
    """The default config with its own truncation sweep replaced by ``toy_cut``."""
    config = default_config()
    del config["models"]["toy_truncated"]
    config["experiments"] = [e for e in config["experiments"] if "toy_truncated" not in e["models"]]
    config["models"]["toy_cut"] = {
        "truncate": {"model": "toy", "layers": layers, "keep_last": keep_last},
        **extra,
    }
    config["experiments"][0]["models"] = ["toy", "toy_cut"]
    return config


def test_a_truncation_sweep_becomes_one_model_per_depth():
    config = validate_config(_with_truncations([1, 2]), SCHEMA)
    assert "toy_cut" not in config["models"]
    cut = config["models"]["toy-L2+last"]
    assert cut["source"] == "toy"
    assert cut["truncation"] == {
        "of": "toy",
        "layers": 2,
        "keep_last": True,
        "kept": [0, 1, 3],
        "depth": 4,
    }
    assert config["experiments"][0]["models"] == ["toy", "toy-L1+last", "toy-L2+last"]
    runs = {(run.model, run.method) for run in planned_runs(config)}
    assert ("toy-L1+last", "greedy") in runs
    plain = validate_config(_with_truncations([3], keep_last=False), SCHEMA)
    assert plain["models"]["toy-L3"]["truncation"]["kept"] == [0, 1, 2]


@pytest.mark.parametrize(
    "layers, keep_last, message",
    [
        ([3], True, "full model"),  # blocks 0-2 and the last of 4: all of them
        ([4], False, "full model"),
        ([5], False, "4"),
    ],
)
def test_a_truncation_that_keeps_every_block_is_refused(layers, keep_last, message):
    with pytest.raises(UserError, match=message) as info:
        validate_config(_with_truncations(layers, keep_last), SCHEMA)
    assert "models.toy_cut.truncate.layers" in str(info.value)


def test_a_truncation_sweep_takes_no_other_keys_and_needs_a_base():
    with pytest.raises(UserError, match=r"models.toy_cut: a truncation sweep takes no other"):
        validate_config(_with_truncations([1], dtype="float32"), SCHEMA)
    config = _with_truncations([1])
    config["models"]["toy_cut"]["truncate"]["model"] = "nope"
    with pytest.raises(UserError, match="'nope' is not a model entry"):
        validate_config(config, SCHEMA)
    config = default_config()
    config["models"]["bare"] = {"dtype": "float32"}
    with pytest.raises(UserError, match="models.bare: needs a source"):
        validate_config(config, SCHEMA)


def test_published_depths_are_known_before_any_job():
    config = default_config()
    config["models"] = {
        "qwen": {"source": "Qwen/Qwen2.5-Math-7B"},
        "cut": {"truncate": {"model": "qwen", "layers": [21, 27]}},
    }
    config["experiments"] = [{"tasks": ["arithmetic"], "models": ["cut"], "methods": ["greedy"]}]
    with pytest.raises(UserError, match="full model"):
        validate_config(config, SCHEMA)


def test_truncation_config_is_the_published_experiment_without_its_mistake():
    config = load_config(ROOT / "config" / "truncation.yaml", SCHEMA)
    for base in ["qwen2.5-math-1.5b", "qwen2.5-math-7b"]:
        cuts = {
            name: model["truncation"]
            for name, model in config["models"].items()
            if model.get("truncation", {}).get("of") == base
        }
        assert sorted(cut["layers"] for cut in cuts.values()) == [21, 22, 23, 24, 25]
        for cut in cuts.values():
            assert cut["keep_last"] and cut["depth"] == 28
            assert cut["kept"] == [*range(cut["layers"]), 27]
    power = config["methods"]["power_2"]
    assert (power["alpha"], power["block_size"], power["mcmc_steps"]) == (2.0, 64, 10)
    assert power["max_new_tokens"] == config["methods"]["temp_0.5"]["max_new_tokens"] == 1024
    assert config["methods"]["temp_0.5"]["T"] == 0.5
    runs = planned_runs(config)
    assert {run.seed for run in runs} == {0, 1, 2, 3}
    assert len({run.model for run in runs}) == 12  # 2 full models, 10 truncations
    assert n_shards(config, "math500") * config["tasks"]["math500"]["shard_size"] == 500


def test_an_architecture_the_studies_cannot_serve_is_refused_before_any_job(tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2", "n_layer": 4}')
    config = default_config()
    config["models"]["gpt"] = {"source": str(gpt2)}
    config["studies"]["logit_lens"] = {"tasks": ["binding"], "models": ["toy", "gpt"]}
    with pytest.raises(UserError, match=r"models.gpt: LogitLens cannot run on its architecture"):
        validate_config(config, SCHEMA)
    # A published architecture the studies serve passes, its depth known from the config.
    config["models"]["gpt"] = {"source": "Qwen/Qwen2.5-Math-1.5B"}
    validate_config(config, SCHEMA)
