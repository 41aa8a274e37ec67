"""The HumanEval sandbox's supervisor, and the protocol both sides of the sandbox speak.

The supervisor is a script, run as ``python -I -B -c <text>``: this module's text followed
by those of :mod:`~powersampling.grading.sandbox_kernel` and
:mod:`~powersampling.grading.sandbox_code_process` (which calls :func:`main`), joined by
:mod:`~powersampling.grading.sandbox_script`. :class:`~powersampling.grading.sandbox.Sandbox`
starts it in a fresh interpreter in its own session. It reads its settings as one JSON
line on stdin, forks the code process, and reports the child's pid and exit status on
stdout, one JSON line each. The code process confines itself (limits, identity, Landlock,
seccomp, audit hook; see the module doc of :mod:`powersampling.grading.code`), runs the
program (prompt + completion, never the tests), and then serves calls of the entry point
over two pipes, one line per message, in the plain-data protocol defined here (the grader
imports :func:`encode`, :func:`decode`, :func:`dumps` and :func:`loads` from this file;
they are the same text, run on each side of the boundary).

It runs in isolated mode (``-I``: no environment variables, no user site, nothing of the
working directory on ``sys.path``), so its parts use the standard library only and must
never import ``powersampling``; this first part imports nothing of it at all, and no part
starts with ``from __future__`` (the parts run as one text). Importing it does nothing.
"""

import json
import numbers
import os
import sys
import time
import traceback

CALLS_FD, REPLIES_FD = 3, 4  # the protocol pipes, as the code process sees them
MAX_LINE = 16 << 20  # bytes in one message; a longer reply is a failure
MAX_DEPTH = 100  # nesting of containers in one value
MAX_HEX_DIGITS = 4096  # integers up to 16384 bits (Python prints at most 4300 digits)
MESSAGE_CAP = 300  # characters of an exception message sent back


# ----------------------------------------------------------------------------------------
# The protocol: plain data as JSON with type tags. Scalars are JSON scalars (NaN and
# Infinity as Python's json writes them); every container is a JSON array whose first
# item is a tag: "l" list, "t" tuple, "s" set, "f" frozenset, "d" dict (keys and values
# alternating), "b" bytes (as a latin-1 string), "i" an int beyond 64 bits (hex). JSON
# objects never appear. Messages are arrays too, one per line:
#   grader -> code: ["call", seq, args (a "t" value), kwargs (a "d" value)]
#   code -> grader: ["ready", info] once the program ran, then for each call
#                   ["ok", seq, value] or ["err", seq, exception class name, message];
#                   ["err", 0, name, message] if the program itself failed.


class ProtocolError(ValueError):
    """A message that is not plain data in the protocol's form."""


_EXACT = (int, float, str, bytes, list, tuple, dict, set, frozenset)
_INT64 = 1 << 63


def _coerce(value):
    """A plain value for ``value``, whose type is not exactly a plain one (code side)."""
    for base in _EXACT:
        if isinstance(value, base):  # a subclass (IntEnum, namedtuple, ...): its base
            return base(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"cannot send a {type(value).__name__} to the grader (plain data only)")


def encode(value, lenient=False, depth=0):
    """``value`` as JSON-ready data; ``lenient`` turns subclasses and numbers into plain
    types (the code side), otherwise anything but exact plain types is a TypeError."""
    if value is None or value is True or value is False:
        return value
    t = type(value)
    if t not in _EXACT:
        if not lenient:
            raise TypeError(f"not plain data: {t.__name__}")
        value = _coerce(value)
        t = type(value)
    if t is int:
        return value if -_INT64 <= value < _INT64 else ["i", hex(value)]
    if t is float or t is str:
        return value
    if t is bytes:
        return ["b", value.decode("latin-1")]
    if depth >= MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if t is dict:
        out = ["d"]
        for k, v in value.items():
            out.append(encode(k, lenient, depth + 1))
            out.append(encode(v, lenient, depth + 1))
        return out
    tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}[t]
    return [tag] + [encode(v, lenient, depth + 1) for v in value]


def decode(data, deadline=None):
    """Fresh plain objects from JSON-parsed ``data``; ProtocolError if it is malformed.

    Checks ``deadline`` (a ``time.monotonic()`` value) as it goes: building a set or a
    dict of keys chosen to collide costs quadratic time, bounded this way.
    """
    count = [0]

    def build(obj, depth):
        t = type(obj)
        if obj is None or t is bool or t is int or t is float or t is str:
            return obj
        if t is not list or not obj or type(obj[0]) is not str:
            raise ProtocolError(f"not a tagged value: {t.__name__}")
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"nested deeper than {MAX_DEPTH}")
        count[0] += len(obj)
        if deadline is not None and count[0] > 4096:
            count[0] = 0
            if time.monotonic() > deadline:
                raise TimeoutError("timeout")
        tag = obj[0]
        if tag in ("i", "b"):
            if len(obj) != 2 or type(obj[1]) is not str:
                raise ProtocolError(f"bad {tag!r} value")
            if tag == "b":
                try:
                    return obj[1].encode("latin-1")
                except UnicodeEncodeError:
                    raise ProtocolError("bytes out of range") from None
            digits = obj[1].lstrip("-")
            if len(digits) > MAX_HEX_DIGITS + 2 or not digits.startswith("0x"):
                raise ProtocolError("integer malformed or beyond 16384 bits")
            try:
                return int(obj[1], 16)
            except ValueError:
                raise ProtocolError("integer malformed") from None
        items = [build(v, depth + 1) for v in obj[1:]]
        try:
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            if tag == "s":
                return set(items)
            if tag == "f":
                return frozenset(items)
            if tag == "d" and len(items) % 2 == 0:
                return dict(zip(items[::2], items[1::2], strict=True))
        except TypeError as exc:  # an unhashable set member or dict key
            raise ProtocolError(str(exc)) from None
        raise ProtocolError(f"unknown tag {tag[:20]!r}")

    return build(data, 0)


def dumps(message):
    """One protocol line: ASCII JSON (no raw newline inside), newline-terminated."""
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")


def loads(line):
    """The JSON array of one line; ProtocolError if it is not one."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError, MemoryError) as exc:  # incl. UnicodeDecodeError
        raise ProtocolError(f"not JSON: {str(exc)[:80]}") from None
    if type(message) is not list or not message or type(message[0]) is not str:
        raise ProtocolError("not a message")
    return message


# ----------------------------------------------------------------------------------------
# The supervisor.


def main(child):
    """Read the settings, fork the code process (it runs ``child(settings)`` and exits with
    what that returns), report its pid and then its wait status."""
    cfg = json.loads(sys.stdin.readline())
    status = os.fdopen(os.dup(1), "w")
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = child(cfg)
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        os._exit(code)
    # Only the code process keeps the protocol pipes: when it ends, the grader sees EOF.
    for fd in (cfg["calls_fd"], cfg["replies_fd"], cfg["stdout_fd"], cfg["stderr_fd"]):
        os.close(fd)
    status.write(json.dumps({"pid": pid}) + "\n")
    status.flush()
    _, st = os.waitpid(pid, 0)
    status.write(json.dumps({"status": st}) + "\n")
    status.flush()
    os._exit(0)  # nothing to tear down
