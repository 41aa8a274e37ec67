"""Loading models and tokenizers from local folders (no network)."""

import pytest
import torch

from powersampling.errors import UserError
from powersampling.models import eos_token_ids, load_model, resolve_device
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
