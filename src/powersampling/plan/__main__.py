"""``python -m powersampling.plan``: see :mod:`powersampling.plan.cli`."""

import sys

from powersampling.plan.cli import main

sys.exit(main())
