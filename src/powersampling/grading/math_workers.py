"""Worker processes for batches of math grading, with a hard wall-clock limit on each job.

Workers are plain subprocesses of this interpreter speaking JSON lines on stdin/stdout.
Not multiprocessing: its fork start method is unsafe once torch threads exist, and its
spawn/forkserver methods re-import the caller's __main__ (a workflow script without a
main guard would run again in every worker). A stuck worker is killed and replaced.

What a job is and how a worker grades it is :mod:`powersampling.grading.math`'s business;
here a job is a JSON object with a ``"reference"``, and a worker is a loop that says
``{"ready": true}`` once, then answers each job with one JSON object carrying the job's
``"i"``.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STARTUP_S = 120.0  # a worker must be ready (imports done) within this


@dataclass
class Worker:
    """A worker process and where it stands."""

    proc: subprocess.Popen
    buf: bytes = b""
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0  # startup deadline until ready, then the current item's
    group: str | None = None  # the reference whose items this worker is grading


class JobQueue:
    """Pending jobs grouped by reference. A worker keeps to one reference until its jobs
    are done, then takes a reference nobody has started, and only when none is left helps
    with the one with most jobs left: each worker then parses (and caches) about its
    share of the references, not all of them."""

    def __init__(self, jobs: list[dict]):
        self.groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            self.groups.setdefault(job["reference"], []).append(i)
        for items in self.groups.values():
            items.reverse()  # stacks, so items go out in order
        self.fresh = list(reversed(self.groups))

    def __bool__(self) -> bool:
        return bool(self.groups)

    def pop(self, w: Worker) -> int:
        if w.group not in self.groups:
            while self.fresh and self.fresh[-1] not in self.groups:
                self.fresh.pop()
            if self.fresh:
                w.group = self.fresh.pop()
            else:
                w.group = max(self.groups, key=lambda k: len(self.groups[k]))
        items = self.groups[w.group]
        i = items.pop()
        if not items:
            del self.groups[w.group]
        return i


def _start_worker(main: Callable[[], None]) -> Worker:
    """A worker process running ``main``, a module-level function it imports by name."""
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = f"from {main.__module__} import {main.__name__}; {main.__name__}()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    os.set_blocking(proc.stdout.fileno(), False)
    return Worker(proc, deadline=time.monotonic() + STARTUP_S)


def _stop(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.kill()
    worker.proc.wait()
    for stream in (worker.proc.stdin, worker.proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


def run_in_workers(
    jobs: list[dict],
    workers: int,
    hard_timeout_s: float,
    settings: dict,
    main: Callable[[], None],
) -> list[dict | str]:
    """Each job's reply (less its ``"i"``) from ``workers`` processes running ``main``, or
    why there is none.

    A worker gets a job as one JSON line: the job, its index ``"i"`` and ``settings``.
    A job not answered within ``hard_timeout_s`` seconds gets ``"timeout"``, one whose
    worker dies gets ``"grader worker died"``; the worker is killed and a fresh one started.
    A worker that ends with no job in hand, or is not ready within :data:`STARTUP_S`, raises
    RuntimeError.
    """
    n = len(jobs)
    results: list[dict | str | None] = [None] * n
    pending = JobQueue(jobs)
    pool: list[Worker] = []
    sel = selectors.DefaultSelector()

    def spawn() -> None:
        w = _start_worker(main)
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        pool.append(w)

    def retire(w: Worker, why: str) -> None:
        if w.item is None:  # died before it was ready: nothing to blame it on
            raise RuntimeError(f"a math grading worker failed to start ({why})")
        results[w.item] = why
        sel.unregister(w.proc.stdout)
        _stop(w)
        pool.remove(w)
        spawn()

    for _ in range(max(1, min(workers, n))):
        spawn()
    try:
        while True:
            for w in list(pool):
                if w.ready and w.item is None and pending:
                    i = pending.pop(w)
                    req = {"i": i, **jobs[i], **settings}
                    w.item, w.deadline = i, time.monotonic() + hard_timeout_s
                    try:
                        w.proc.stdin.write((json.dumps(req) + "\n").encode())
                        w.proc.stdin.flush()
                    except BrokenPipeError:
                        retire(w, "grader worker died")
            waiting = [w for w in pool if not w.ready or w.item is not None]
            if not pending and all(w.item is None for w in pool):
                break
            wait = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                w = key.data
                chunk = os.read(w.proc.stdout.fileno(), 1 << 20)
                if not chunk:  # EOF: the worker died
                    retire(w, "grader worker died")
                    continue
                w.buf += chunk
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    reply = json.loads(line)
                    if reply.pop("ready", False):
                        w.ready = True
                        continue
                    results[reply.pop("i")] = reply
                    w.item = None
            now = time.monotonic()
            for w in list(pool):
                if (not w.ready or w.item is not None) and now >= w.deadline:
                    retire(w, "timeout")
    finally:
        for w in pool:
            sel.unregister(w.proc.stdout)
            _stop(w)
        sel.close()
    return results  # type: ignore[return-value]
