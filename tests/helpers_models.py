"""Tiny seeded models and a tiny tokenizer for tests (built in-process, no downloads)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

UNK_ID, EOS_ID, PAD_ID = 0, 1, 2
SPECIALS = ["<unk>", "<eos>", "<pad>"]
CHARS = list("0123456789+= ")  # 3 specials + 13 characters = 16 tokens
VOCAB_SIZE = len(SPECIALS) + len(CHARS)


def tiny_model(seed: int = 0, max_positions: int = 64, init_std: float = 0.3) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2 with a 16-token vocabulary, in eval mode.

    The large initialisation scale (0.3 instead of 0.02) makes next-token distributions
    peaked and varied, so greedy choices are well separated and temperatures matter.
    """
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def tiny_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """One token per character of ``CHARS``; ids 0-2 are unk, EOS and pad."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), V] of one unpadded sequence in a single forward pass without cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: on a busy machine, multi-threaded kernels on
    tiny tensors spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved_job_inputs(root, n_problems: int):
    """A toy-shaped model folder ``root/m`` and a synthetic task's data file
    ``root/sums.parquet`` of ``n_problems`` problems, as the workflow has them; returns
    (root, the task's config entry)."""
    from powersampling.stages.data import synthetic_data
    from powersampling.toy.model import build_toy_model, toy_model_config
    from powersampling.toy.tokenizer import VOCAB_SIZE, build_char_tokenizer

    shape = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    build_toy_model(toy_model_config(VOCAB_SIZE, **shape), seed=0).save_pretrained(root / "m")
    build_char_tokenizer().save_pretrained(root / "m")
    task = {"kind": "synthetic", "limit": n_problems, "generator": {"kinds": ["arithmetic"]}}
    synthetic_data("sums", task, seed=0, out_path=root / "sums.parquet")
    return root, task
