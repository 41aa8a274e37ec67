"""Where a model or dataset ``source`` points: a local path or a Hugging Face hub id.

One rule for the config checks, the model loader and the dataset reader.
"""

from __future__ import annotations

import os

# Hub ids ("name", "org/name") start with a letter, digit or underscore; a source starting
# with one of these is written as a path.
PATH_PREFIXES = ("/", "~", ".")


def is_local_path(source: str) -> bool:
    """Whether ``source`` names a local file or folder rather than a hub id.

    - Written as a path (starts with ``/``, ``~`` or ``.``: ``/abs``, ``~/x``, ``./x``,
      ``../x``, ``.``, ``.cache/x``): local, whether or not it exists, so a missing one
      is reported as a missing path instead of being looked up on the hub. No hub id
      starts with these characters.
    - Anything else (``gpt2``, ``org/name``, ``org/name:file.csv``): a hub id, unless a
      file or folder of that name exists relative to the working directory (the same
      precedence ``transformers`` gives a local folder over the hub).
    - The empty string is neither (False).
    """
    if not source:
        return False
    return source.startswith(PATH_PREFIXES) or os.path.exists(source)
