"""``python -m powersampling.memory``: see :mod:`powersampling.memory.cli`."""

import sys

from powersampling.memory.cli import main

sys.exit(main())
