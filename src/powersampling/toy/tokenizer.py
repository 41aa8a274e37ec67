"""A character-level tokenizer for the toy model, saved and loaded like any hub tokenizer.

It is a byte-level BPE with no merges: one token per byte, so every ASCII character
(letters, digits, punctuation, space, newline, tab) is one token, and any other text is
spelled in its UTF-8 bytes (nothing is ever unknown, and decoding inverts encoding).
Three special tokens sit in front: unknown (kept for the interface, never produced),
end of sequence and padding (distinct from EOS so that a padded batch never looks
finished).

Why bytes rather than a table of characters: ``AutoTokenizer`` rebuilds the tokenizer of a
``qwen2`` checkpoint as ``Qwen2Tokenizer``, keeping only the vocabulary and merges from
``tokenizer.json`` and imposing Qwen2's byte-level pipeline. A tokenizer that already is a
byte-level BPE loads back to exactly the same token ids, with or without ``config.json``
beside it, so the toy model goes through the same loading code as a real model.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|unk|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (UNK_TOKEN, EOS_TOKEN, PAD_TOKEN)
UNK_ID, EOS_ID, PAD_ID = 0, 1, 2
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte 0..255 used by byte-level BPE (as in GPT-2)."""
    # Printable Latin-1 bytes stand for themselves; the others are shifted past 255.
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, shift = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in range(256)]


def token_id(char: str) -> int:
    """The id of a one-byte (ASCII) character: 3 + its code."""
    (code,) = char.encode()
    return len(SPECIAL_TOKENS) + code


# A user turn renders as the plain prompt ("Q: ...\nA: ") and an assistant turn as the
# answer and EOS, so the chat path gives the toy model exactly the text it was trained on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}A: {{ message['content'] }}" + EOS_TOKEN + "\n"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def build_char_tokenizer(model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """The toy world's tokenizer: ids 0-2 are unk/EOS/pad, then byte ``b`` is id ``3 + b``."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({sym: len(SPECIAL_TOKENS) + b for b, sym in enumerate(byte_symbols())})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False))
    # The same normaliser and byte mapping as Qwen2Tokenizer (see the module docstring).
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (UNK_ID, EOS_ID, PAD_ID), ids
    return tokenizer
