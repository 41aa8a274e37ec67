"""Suite-wide settings, and the tiny enumerated Qwen2 of the exactness tests (tiny_qwen.py).

The fixtures ``model``, ``engine`` and ``support`` are that world's; a test module that
defines its own fixture of the same name uses its own instead.
"""

import pytest
import torch
from tiny_qwen import ALPHA, CAP, EOS, PROMPT

# The tests use tiny models, for which thread start-up costs more than it saves; one
# thread also keeps CPU results identical from run to run.
torch.set_num_threads(1)

# The fixtures are module-scoped, so each test module gets its own instance (as when each
# module built its own); they import the library inside, so collecting the suite doesn't.


@pytest.fixture(scope="module")
def model():
    """A random Qwen2 with vocabulary {0, 1, EOS=2}."""
    from powersampling.toy.enumerate import random_tiny_model

    return random_tiny_model(3, seed=4, init_std=0.25)


@pytest.fixture(scope="module")
def engine(model):
    """The decoding engine of ``model``, padding with EOS."""
    from powersampling.engine import DecodingEngine

    return DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


@pytest.fixture(scope="module")
def support(model):
    """Every answer of ``model`` to PROMPT of at most CAP tokens, proposals at T = 1/ALPHA."""
    from powersampling.toy.enumerate import enumerate_answers

    return enumerate_answers(model, PROMPT, [EOS], CAP, proposal_temperature=1 / ALPHA)
