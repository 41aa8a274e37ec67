"""Loading models and tokenizers from local folders (no network)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from powersampling.errors import UserError
from powersampling.models import (
    MODEL_FILE_PATTERNS,
    download_model,
    eos_token_ids,
    load_model,
    resolve_device,
)
from powersampling.toy.model import build_toy_model, toy_model_config
from powersampling.toy.tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, build_char_tokenizer

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny Qwen2 model with the toy tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny")
    build_toy_model(toy_model_config(VOCAB_SIZE, **TINY), seed=0).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return path


def test_load_model_from_folder(model_dir):
    model, tokenizer = load_model(str(model_dir))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not model.training
    assert model.device == resolve_device("auto")
    assert model.dtype == torch.float32
    assert tokenizer.padding_side == "left"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)


@pytest.mark.parametrize(
    "dtype, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_load_model_dtype(model_dir, dtype, expected):
    model, _ = load_model(str(model_dir), dtype=dtype, device="cpu")
    assert model.dtype == expected


def test_pad_token_falls_back_to_eos(tmp_path):
    build_toy_model(toy_model_config(VOCAB_SIZE, **TINY), seed=0).save_pretrained(tmp_path)
    tokenizer = build_char_tokenizer()
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    _, loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.pad_token_id == loaded.eos_token_id == EOS_ID
    assert loaded.padding_side == "left"


def test_load_model_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/model")
    with pytest.raises(UserError, match="empty"):
        (tmp_path / "empty").mkdir()
        load_model(str(tmp_path / "empty"))
    name = "powersampling-tests/no-such-model"
    with pytest.raises(UserError, match=name):
        load_model(name, local_files_only=True)
    with pytest.raises(UserError, match="dtype"):
        load_model(str(model_dir), dtype="float64")


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            resolve_device("cuda")


def test_eos_token_ids(model_dir):
    model, tokenizer = load_model(str(model_dir), device="cpu")
    assert eos_token_ids(model, tokenizer) == [EOS_ID]
    model.generation_config.eos_token_id = [7, EOS_ID]
    assert eos_token_ids(model, tokenizer) == [EOS_ID, 7]
    model.generation_config.eos_token_id = None
    assert eos_token_ids(model, tokenizer) == [EOS_ID]


# --------------------------------------------------------------------------- staging


def local_hub(repo_dir):
    """Stand-ins for the hub: one repository whose only commit is ``repo_dir``'s files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def resolve_commit(hub_id, revision):
        if revision not in (None, "main", commit):
            raise ValueError(f"Revision Not Found: {revision}")
        return commit

    def fetch(*, repo_id, revision, local_dir, allow_patterns):
        import fnmatch
        import shutil

        calls.append({"repo_id": repo_id, "revision": revision, "patterns": allow_patterns})
        for path in sorted(repo_dir.rglob("*")):
            name = str(path.relative_to(repo_dir))
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                target = Path(local_dir) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)

    return commit, calls, resolve_commit, fetch


def test_download_model_stages_one_commit_and_loads_offline(model_dir, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(model_dir, repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickled weights are never fetched")
    (repo / "modeling_custom.py").write_text("raise SystemExit('vendor code is never fetched')")
    commit, calls, resolve_commit, fetch = local_hub(repo)

    out = tmp_path / "cache" / "tiny"
    record = download_model(
        "org/tiny", out, revision="main", resolve_commit=resolve_commit, fetch=fetch, log=_quiet
    )
    # Every file comes from the commit the revision resolved to, asked for by its hash.
    assert calls == [{"repo_id": "org/tiny", "revision": commit, "patterns": MODEL_FILE_PATTERNS}]
    assert record["commit"] == commit and record["revision"] == "main"
    staged = sorted(p.name for p in out.iterdir())
    assert "pytorch_model.bin" not in staged and "modeling_custom.py" not in staged
    assert ".cache" not in staged and "download.json" in staged
    assert json.loads((out / "download.json").read_text()) == record
    assert record["files"]["config.json"] == (out / "config.json").stat().st_size
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = load_model(str(out), local_files_only=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"


def test_download_model_refuses_an_incomplete_repository(model_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_dir, repo)
    for weights in repo.glob("*.safetensors"):
        weights.unlink()
    _, _, resolve_commit, fetch = local_hub(repo)
    out = tmp_path / "cache" / "tiny"
    with pytest.raises(UserError, match="org/tiny has no safetensors weights"):
        download_model("org/tiny", out, resolve_commit=resolve_commit, fetch=fetch, log=_quiet)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing half-written


def test_download_model_names_a_revision_that_does_not_exist(model_dir, tmp_path):
    _, _, resolve_commit, fetch = local_hub(model_dir)
    with pytest.raises(UserError, match=r"cannot resolve org/tiny@v9: Revision Not Found"):
        download_model(
            "org/tiny", tmp_path / "m", revision="v9", resolve_commit=resolve_commit, fetch=fetch
        )


def _quiet(message: str) -> None:
    pass
