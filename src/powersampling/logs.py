"""Logging for workflow jobs: everything a job prints goes to its log file.

A :class:`~powersampling.errors.UserError` ends the job with its message alone (in the log
and on the console), not a traceback; any other exception keeps its traceback in the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path

from powersampling.errors import UserError


@contextlib.contextmanager
def job_log(path: str | None):
    """Send stdout, stderr and ``logging`` to ``path`` for the duration of a job."""
    if path is None:
        yield logging.getLogger("powersampling")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    console = sys.__stderr__
    with open(path, "w", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield logging.getLogger("powersampling")
        except UserError as err:
            stream.write(f"Error: {err}\n")
            print(f"Error: {err} (log: {path})", file=console)
            raise SystemExit(1) from None
        except BaseException:
            stream.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
