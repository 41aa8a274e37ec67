"""The tiny world of the exactness tests: a random Qwen2 over {0, 1, EOS=2}, enumerated.

Answers to ``PROMPT`` have at most ``CAP`` = 4 tokens (31 answers), so every distribution a
sampler should follow is computed exactly. tests/conftest.py builds the model, its engine
and its answers (fixtures ``model``, ``engine`` and ``support``); the constants here are
the settings the tests of that world share.
"""

PROMPT = [0, 1]
EOS = 2
CAP = 4
ALPHA = 2.0  # the power of the ``support`` fixture, whose proposal is at temperature 1/α
REJECT = 1e-3  # false-alarm rate of every G-test
N_CHAINS = 2000  # independent chains per sampling check
