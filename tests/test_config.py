"""Config validation: defaults are filled in and every problem names its key."""

from pathlib import Path

import pytest
import yaml

from powersampling.config import (
    load_config,
    n_shards,
    planned_runs,
    shard_rows,
    validate_config,
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
    assert n_shards(config, "arithmetic") == 2
    assert shard_rows(config, "arithmetic", 1) == (100, 200)
    with pytest.raises(UserError, match="shard 2 of task arithmetic has no problems"):
        shard_rows(config, "arithmetic", 2)
    runs = planned_runs(config)
    # greedy: 2 tasks x 1 seed; three temperatures and power: 2 tasks x 4 seeds each
    assert len(runs) == 2 + 4 * 2 * 4
    assert len(set(runs)) == len(runs)
