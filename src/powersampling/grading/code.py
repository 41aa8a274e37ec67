"""HumanEval: run a completion and its unit tests in a sandboxed process.

What is enforced, from strongest to weakest (``sandbox_report()`` tells which apply on
the machine at hand):

1. A separate interpreter (``sys.executable -I -B``) in its own session, started through a
   supervisor process (the script :mod:`powersampling.grading.sandbox_supervisor`): the
   code's parent is the supervisor, never the grader. The grader kills the whole process
   group (and the code's pid, in case it left the group) after ``timeout_s`` of wall
   time, and whatever happens to the child, the grader only reads two capped files.
2. Kernel resource limits on the code process: address space (``memory_mb``), CPU
   seconds, file size (8 MB; also caps the output), open files, no core dumps, and
   ``RLIMIT_NPROC`` so it cannot fork or start threads (the kernel does not apply this
   limit to root, hence 3).
3. When the grader runs as root: the code runs as uid/gid 65534 ("nobody") keeping only
   CAP_DAC_READ_SEARCH (read any file, so the interpreter's stdlib stays importable under
   /root, but write nothing it does not own) and with ``no_new_privs``; the throw-away
   working directory is the only place it owns. It cannot signal the grader either.
4. A fresh network namespace (no interfaces but a down loopback) when the kernel allows
   ``unshare`` (root, or unprivileged user namespaces).
5. Always, inside the interpreter: an audit hook (which Python code cannot remove) that
   refuses writes outside the working directory, process creation, signals to other
   processes, sockets, ctypes, and changing resource limits. This is the only layer that
   stops writes to world-writable places such as /tmp when 3 does not apply; a C
   extension could bypass it.

A pass requires a random token that the supervisor prints only after ``check(entry_point)``
returned, so ``sys.exit(0)``, ``os._exit(0)`` or a crash before the tests finish is a
failure. The token guards against accidental passes, not against code written to find
and forge it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from powersampling.grading.verdict import Grade

GRADER = "humaneval-sandbox"
NOBODY = 65534
OUTPUT_CAP = 4096  # bytes of each captured stream kept for error messages
FSIZE_MB = 8
# Codex paper's stop sequences for raw (base-model) continuations of the prompt.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

# The supervisor, a stdlib-only script run in a fresh interpreter (see its module doc).
SUPERVISOR = Path(__file__).resolve().with_name("sandbox_supervisor.py")


@functools.cache
def _supervisor_code() -> str:
    # Passed with -c, as its text: the sandboxed code sees sys.argv == ["-c"] and no
    # supervisor file name in its tracebacks, whatever the install location.
    return SUPERVISOR.read_text()


def truncate_at_stops(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Cut a raw continuation at the first stop sequence (the function body ends there)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def extract_code(completion: str, entry_point: str) -> tuple[str, bool]:
    """The code to append to the prompt, and whether it is a whole program part.

    Chat models answer with a fenced block, usually holding the whole function (it then
    replaces the prompt's stub, which is still valid Python with its docstring as body);
    base models continue the prompt with the body, cut at the Codex stop sequences.
    Returns (code, whole) where ``whole`` means top-level code rather than a body.
    """
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*?)(?:```|\Z)", completion, re.S)
    if blocks:
        named = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        code = (named or blocks)[0]
    else:
        code = completion
    first = next((line for line in code.splitlines() if line.strip()), "")
    whole = bool(first) and not first[0].isspace()
    if not blocks and not whole:
        code = truncate_at_stops(code)
    return code, whole


def build_program(row: dict[str, Any], completion: str) -> tuple[str, str]:
    """(program to run, the code taken from the completion) for a HumanEval row."""
    code, whole = extract_code(completion, row["entry_point"])
    body = ("\n" + code) if whole else code
    program = (
        row["prompt"] + body + "\n\n" + row["test"] + "\n\n" + f"check({row['entry_point']})\n"
    )
    return program, code


def _read_cap(path: Path, cap: int = OUTPUT_CAP) -> str:
    """The first and last ``cap // 2`` bytes of a file (it may be megabytes of flood)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if size <= cap:
                data = f.read()
            else:
                head = f.read(cap // 2)
                f.seek(size - cap // 2)
                data = head + b"\n...[truncated]...\n" + f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _tail_line(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _kill(pid: int | None, group: bool) -> None:
    if pid is None:
        return
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(
    program: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    *,
    drop_privileges: bool = True,
    guards: bool = True,
) -> dict[str, Any]:
    """Run ``program`` in the sandbox; returns passed, timed_out, status, stdout, stderr.

    ``passed`` means the program ran to its end (the token was printed). ``guards=False``
    and ``drop_privileges=False`` switch layers 5 and 3 off (see the module doc); they
    exist so the tests can check that the kernel-level layers hold on their own.
    """
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-"))
    token = secrets.token_hex(16)
    try:
        (workdir / "solution.py").write_text(program)
        cfg = {
            "dir": str(workdir),
            "program": str(workdir / "solution.py"),
            "token": token,
            "timeout_s": timeout_s,
            "memory_mb": int(memory_mb),
            "fsize": FSIZE_MB << 20,
            "drop_privileges": drop_privileges,
            "guards": guards,
            "uid": NOBODY,
        }
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(workdir)}
        env["TMPDIR"] = str(workdir)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _supervisor_code()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,  # its own process group: killpg reaches everything
        )
        timed_out = False
        try:
            out, err = proc.communicate(json.dumps(cfg).encode() + b"\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc.pid, group=True)
            out, err = proc.communicate()
        reports = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        child_pid = next((r["pid"] for r in reports if "pid" in r), None)
        status = next((r["status"] for r in reports if "status" in r), None)
        # Stragglers: anything left in the group, and the code process if it left it.
        _kill(proc.pid, group=True)
        _kill(child_pid, group=False)
        stdout = _read_cap(workdir / "stdout.txt")
        stderr = _read_cap(workdir / "stderr.txt")
        lines = stdout.strip().splitlines()
        passed = (
            not timed_out
            and status == 0
            and proc.returncode == 0
            and bool(lines)
            and lines[-1] == token
        )
        return {
            "passed": passed,
            "timed_out": timed_out,
            "status": status,
            "supervisor_returncode": proc.returncode,
            "supervisor_stderr": err.decode("utf-8", "replace")[-OUTPUT_CAP:],
            "stdout": stdout.replace(token, "<pass token>"),
            "stderr": stderr,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _why(result: dict[str, Any]) -> str:
    if result["timed_out"]:
        return "timeout"
    status = result["status"]
    if status is None:
        return f"sandbox supervisor ended with {result['supervisor_returncode']}"
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"killed by {sig} (resource limit)" if sig in ("SIGXCPU", "SIGXFSZ") else sig
    last = _tail_line(result["stderr"])
    if os.WEXITSTATUS(status) == 0:
        return "exited before the tests finished"
    return last or f"exit status {os.WEXITSTATUS(status)}"


def grade_code(
    problem_row: dict[str, Any],
    completion: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    **sandbox: Any,
) -> Grade:
    """Grade a HumanEval completion: prompt + code + tests + ``check(entry_point)``.

    ``problem_row`` needs ``prompt``, ``test`` and ``entry_point``. A pass needs the
    program to reach its end within ``timeout_s`` seconds of wall time and
    ``memory_mb`` of address space; every failure carries a one-line reason in ``error``.
    """
    completion = completion if isinstance(completion, str) else ""  # None / NaN: no code
    program, code = build_program(problem_row, completion)
    if not code.strip():
        return Grade(None, False, False, GRADER, "no code in completion")
    result = run_program(program, timeout_s, memory_mb, **sandbox)
    error = None if result["passed"] else _why(result)
    return Grade(code, result["passed"], True, GRADER, error)


def grade_code_many(
    rows: list[dict[str, Any]],
    completions: list[str],
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int = 2,
) -> list[Grade]:
    """:func:`grade_code` over many items; each runs in its own sandbox process, the
    threads here only wait on them."""
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
print("uid", os.getuid())
with open("/proc/self/uid_map") as f:
    print("uid_map", " ".join(f.read().split()) or "-")
with open("/proc/net/dev") as f:
    names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
print("interfaces", ",".join(names))
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    print("fork", "allowed")
except Exception:
    print("fork", "blocked")
"""


def sandbox_report(guards: bool = False) -> dict[str, Any]:
    """What the sandbox enforces on this machine, measured by running a probe in it.

    Runs with the audit hook off by default, so the report shows the kernel-level layers.
    """
    result = run_program(_PROBE, timeout_s=10, guards=guards)
    fields = dict(
        line.split(" ", 1) for line in result["stdout"].splitlines() if line.count(" ") >= 1
    )
    interfaces = [n for n in fields.get("interfaces", "").split(",") if n]
    return {
        "ran": result["passed"],
        "uid": int(fields["uid"]) if "uid" in fields else None,
        # In a fresh user namespace (non-root) getuid() reads 65534 too; only the initial
        # namespace's identity map means the kernel really sees uid 65534.
        "runs_as_nobody": fields.get("uid") == str(NOBODY)
        and fields.get("uid_map") == "0 0 4294967295",
        "network_isolated": bool(interfaces) and interfaces == ["lo"],
        "fork_blocked": fields.get("fork") == "blocked",
        "audit_hook": guards,
        "stderr": _tail_line(result["stderr"]),
    }
