"""Benchmark: grading 4,000 MATH answers (500 problems x 8 seeds), old behaviour vs new.

The workload is built offline from the MATH-500 references (``../shared/data/MATH500.json``
by default; without it the benchmark stops with a message) and a seeded RNG: per problem,
about 60% of the seeds agree on one answer and the rest are the reference (sometimes
written differently), plausible wrong answers, unboxed or garbage completions, and a few
copies of pathological expressions (``9^{9^{9^{9}}}``, ``(10^{100})!``, ``(x+1)^{1000}``...).
Every completion has its own reasoning text, as different seeds would.

Each configuration runs in a fresh Python process (cold caches, like a grading job) and
times one ``grade_math_many`` call: in-process (``workers=0``) and in 2 worker processes,
for the old behaviour (every row graded, no guards: only the timers stop pathological
answers), guards alone, and the new default (dedupe + guards). The verdicts of every
configuration are compared with the new default's: with the same guards they must be
identical; the unguarded ones may differ only in ``error`` on rows the guards refuse.
Results: ``benchmarks/results/<name>.json`` and a markdown table on stdout.

    python benchmarks/bench_grading.py                   # about 7 minutes on 2 cores
    python benchmarks/bench_grading.py --modes new-w0,new-w2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "MATH500.json"

# name: (dedupe, guards, workers); "w0" is in-process
MODES = {
    "old-w0": (False, False, 0),
    "old-w2": (False, False, 2),
    "guards-w0": (False, True, 0),
    "guards-w2": (False, True, 2),
    "new-w0": (True, True, 0),
    "new-w2": (True, True, 2),
}
LABELS = {
    "old": "old: every row, timers only",
    "guards": "guards, every row",
    "new": "new: dedupe + guards",
}

PATHOLOGICAL = [
    r"9^{9^{9^{9}}}",
    r"(10^{100})!",
    r"99999999^{99999999}",
    r"(x+1)^{1000}",
    "(" * 30 + "1" + ")" * 30,
]
GARBAGE = [
    r"\text{I don't know}",
    r"\text{The answer cannot be determined}",
    "?",
    r"x \approx",
    r"\text{see above}",
    r"\frac{",  # unbalanced inside: still boxed
]
FILLER = (
    "First we note that the problem gives us the relation above. Substituting the values "
    "and simplifying, we obtain a simpler expression. Let us check the edge cases. Since "
    "both sides are positive we may square them. Combining like terms gives the result. "
    "We verify this against the original conditions, which holds. "
).split(". ")


# --------------------------------------------------------------------------- workload


def wrong_answers(ref: str, others: list[str], rng: random.Random) -> list[str]:
    """Three plausible wrong answers to a problem whose reference is ``ref``."""
    out: list[str] = []
    m = re.fullmatch(r"-?\d+", ref.strip())
    f = re.fullmatch(r"\\d?frac\{(\d+)\}\{(\d+)\}", ref.strip())
    if m:
        n = int(ref)
        out += [str(n + 1), str(n - 1), str(2 * n if n else 1)]
    elif f:
        a, b = f.groups()
        out += [rf"\frac{{{b}}}{{{a}}}", rf"\frac{{{int(a) + 1}}}{{{b}}}", str(int(a) * int(b))]
    else:
        out += [f"-{ref}", f"2{ref}" if ref[:1].isalpha() or ref[:1] == "\\" else f"2({ref})"]
    while len(out) < 3:
        out.append(rng.choice(others))
    return out[:3]


def correct_variant(ref: str, rng: random.Random) -> str:
    """The reference written a little differently (another distinct string, same value)."""
    choices = [ref.replace(" ", ""), f"x = {ref}", ref.replace(r"\frac", r"\dfrac"), f" {ref} "]
    choices = [c for c in choices if c != ref] or [f"{ref}."]
    return rng.choice(choices)


def completion(answer: str | None, rng: random.Random, kind: str = "boxed") -> str:
    text = ". ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 12)))
    text = f"Let's reason step by step. {text}. Step {rng.randint(1, 99)} checks out.\n"
    if kind == "unboxed":
        return text + f"So the answer is {answer}."
    if kind == "truncated":
        return text + r"Therefore the final answer is $\boxed{" + str(answer)[:3]
    return text + f"Therefore, the final answer is $\\boxed{{{answer}}}$."


def build_workload(
    references: list[str], seeds: int, agree: float, pathological: int, seed: int
) -> dict:
    """Completions and references, problem-major (problem 0 seeds 0..k, problem 1, ...)."""
    rng = random.Random(seed)
    completions, refs, kinds = [], [], []
    sick = set(rng.sample(range(len(references)), pathological))
    for p, ref in enumerate(references):
        wrong = wrong_answers(ref, references, rng)
        modal = ref if rng.random() < 0.55 else wrong[0]  # the answer most seeds give
        sick_expr = PATHOLOGICAL[len([q for q in sick if q < p]) % len(PATHOLOGICAL)]
        copies = rng.randint(1, 3) if p in sick else 0  # seeds boxing the pathological one
        for s in range(seeds):
            if s < copies:
                completions.append(completion(sick_expr, rng))
                kinds.append("pathological")
            elif rng.random() < agree:
                completions.append(completion(modal, rng))
                kinds.append("modal")
            else:
                u = rng.random()
                if u < 0.25:
                    completions.append(completion(ref, rng))
                    kinds.append("correct")
                elif u < 0.35:
                    completions.append(completion(correct_variant(ref, rng), rng))
                    kinds.append("correct variant")
                elif u < 0.55:
                    completions.append(completion(rng.choice(wrong), rng))
                    kinds.append("wrong")
                elif u < 0.75:  # a one-off wrong answer: a random number or another reference
                    one_off = str(rng.randint(-50, 999)) if u < 0.65 else rng.choice(references)
                    completions.append(completion(one_off, rng))
                    kinds.append("wrong (one-off)")
                elif u < 0.85:
                    completions.append(completion(rng.choice(wrong + [ref]), rng, "unboxed"))
                    kinds.append("unboxed")
                elif u < 0.9:
                    completions.append(completion(ref, rng, "truncated"))
                    kinds.append("truncated")
                else:
                    completions.append(completion(rng.choice(GARBAGE), rng))
                    kinds.append("garbage")
            refs.append(ref)
    return {"completions": completions, "references": refs, "kinds": kinds}


# --------------------------------------------------------------------------- one mode


def run_child(mode: str, workload_path: str, out_path: str, timeout_s: float) -> None:
    """Grade the workload once in this (fresh) process under ``mode``; write JSON."""
    from powersampling.grading.math import grade_math_many

    dedupe, guards, workers = MODES[mode]
    work = json.loads(Path(workload_path).read_text())
    t0, c0 = time.perf_counter(), time.process_time()
    results = grade_math_many(
        work["completions"],
        work["references"],
        workers=workers,
        timeout_s=timeout_s,
        dedupe=dedupe,
        guards=guards,
    )
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, reaped at the end
    verdicts = [[g.extracted, g.correct, g.compliant, g.grader, g.error, p] for g, p in results]
    out = {
        "wall_s": wall,
        "cpu_s": cpu + children.ru_utime + children.ru_stime,
        "verdicts": verdicts,
    }
    Path(out_path).write_text(json.dumps(out))


def run_mode(mode: str, workload_path: str, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--child", mode, "--workload", workload_path]
        cmd += ["--child-out", str(out), "--timeout-s", str(timeout_s)]
        subprocess.run(cmd, check=True)
        res = json.loads(out.read_text())
    res["load_1min_before"] = load
    return res


# --------------------------------------------------------------------------- main


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("sympy", "math-verify", "latex2sympy2_extended", "antlr4-python3-runtime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare(new: list, other: list, same_guards: bool) -> dict:
    """Rows whose verdicts differ; ``error`` may differ only where the guards refused."""
    fields = ["extracted", "correct", "compliant", "grader", "error", "correct_prm"]
    err = fields.index("error")
    diffs = [i for i, (a, b) in enumerate(zip(new, other, strict=True)) if a != b]
    guard_only = all(
        new[i][:err] + new[i][err + 1 :] == other[i][:err] + other[i][err + 1 :]
        and new[i][err] == "too large to compare"
        for i in diffs
    )
    ok = not diffs if same_guards else guard_only
    return {
        "identical": not diffs,
        "identical_but_guard_errors": ok,
        "rows_differing": len(diffs),
        "examples": [
            {
                "row": i,
                "new": dict(zip(fields, new[i], strict=True)),
                "other": dict(zip(fields, other[i], strict=True)),
            }
            for i in diffs[:5]
        ],
    }


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="MATH-500 JSON (list of records)")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--agree", type=float, default=0.6, help="share of seeds on the modal answer")
    ap.add_argument("--pathological", type=int, default=6, help="problems with such answers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="per-check timer")
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    ap.add_argument("--old-repeats", type=int, default=1, help="rounds for the old modes")
    ap.add_argument("--name", default="grading_cpu")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        run_child(args.child, args.workload, args.child_out, args.timeout_s)
        return None

    data = Path(args.data)
    if not data.exists():
        print(f"skipped: no MATH-500 data at {data} (pass --data FILE)", file=sys.stderr)
        return None
    records = json.loads(data.read_text())[: args.problems]
    references = [str(r["answer"]) for r in records]
    work = build_workload(references, args.seeds, args.agree, args.pathological, args.seed)
    from powersampling.grading.math import last_boxed
    from powersampling.io import write_text_atomic

    n = len(work["completions"])
    boxes = [last_boxed(c) for c in work["completions"]]
    pairs = {(b, r) for b, r in zip(boxes, work["references"], strict=True) if b}
    kinds = {k: work["kinds"].count(k) for k in sorted(set(work["kinds"]))}
    modes = [m for m in args.modes.split(",") if m]
    if "new-w2" not in modes:
        modes.append("new-w2")  # the verdicts every other mode is compared with

    # Interleaved rounds (every mode still due, per round) and medians: the machine may be
    # shared, so each round sees similar conditions for all modes. The old modes spend most
    # of their time in 5-second timers and run --old-repeats times only.
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    due = {m: args.old_repeats if m.startswith("old") else args.repeats for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        wpath = str(Path(tmp) / "workload.json")
        Path(wpath).write_text(json.dumps(work))
        for rep in range(max(due.values())):
            for mode in modes:
                if rep < due[mode]:
                    r = run_mode(mode, wpath, args.timeout_s)
                    runs[mode].append(r)
                    print(
                        f"round {rep} {mode}: {r['wall_s']:.1f}s wall, {r['cpu_s']:.1f}s cpu, "
                        f"load {r['load_1min_before']:.2f}",
                        file=sys.stderr,
                    )

    ref_verdicts = runs["new-w2"][0]["verdicts"]
    rows = []
    for mode in modes:
        dedupe, guards, workers = MODES[mode]
        reps = runs[mode]
        cmps = [compare(ref_verdicts, r["verdicts"], same_guards=guards) for r in reps]
        cmp = next((c for c in cmps if not c["identical_but_guard_errors"]), cmps[-1])
        r = {
            "wall_s": statistics.median(x["wall_s"] for x in reps),
            "cpu_s": statistics.median(x["cpu_s"] for x in reps),
            "verdicts": reps[0]["verdicts"],
        }
        if guards:
            cmp = next((c for c in cmps if not c["identical"]), cmp)
        rows.append(
            {
                "method": LABELS[mode.split("-")[0]],
                "mode": mode,
                "dedupe": dedupe,
                "guards": guards,
                "workers": workers,
                "in_process": workers == 0,
                "answers": n,
                "graded_items": len(pairs) if dedupe else n,
                "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"],
                "answers_per_s": n / r["wall_s"],
                "s_per_4000": 4000 * r["wall_s"] / n,
                "repeats": len(reps),
                "wall_s_all": [x["wall_s"] for x in reps],
                "cpu_s_all": [x["cpu_s"] for x in reps],
                "load_1min_before": [x["load_1min_before"] for x in reps],
                "timeouts": sum(v[4] == "timeout" for v in r["verdicts"]),
                "refused_by_guards": sum(v[4] == "too large to compare" for v in r["verdicts"]),
                "correct": sum(bool(v[1]) for v in r["verdicts"]),
                "correct_prm": sum(bool(v[5]) for v in r["verdicts"]),
                "vs_new_verdicts": cmp,
            }
        )
    base = next((row for row in rows if row["mode"] == "old-w2"), None)
    for row in rows:
        row["speedup_vs_old_w2"] = base["wall_s"] / row["wall_s"] if base else None
    for row in rows:  # the benchmark's assertion: dedupe and guards keep the verdicts
        cmp = row["vs_new_verdicts"]
        assert cmp["identical_but_guard_errors"], (row["mode"], cmp["examples"])
        if row["guards"]:
            assert cmp["identical"], (row["mode"], cmp["examples"])
    # ... and the guards refuse the pathological answers only
    refused = [i for i, v in enumerate(ref_verdicts) if v[4] == "too large to compare"]
    refused_kinds = {k: [work["kinds"][i] for i in refused].count(k) for k in kinds}
    assert all(work["kinds"][i] == "pathological" for i in refused), refused_kinds

    result = {
        "name": args.name,
        "device": cpu_model(),
        "device_kind": "cpu",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "versions": versions(),
        "load_1min_end": os.getloadavg()[0],
        "settings": {
            "data": str(data.name),
            "problems": len(references),
            "seeds": args.seeds,
            "agree": args.agree,
            "pathological_problems": args.pathological,
            "pathological_expressions": PATHOLOGICAL,
            "rng_seed": args.seed,
            "repeats": args.repeats,
            "old_repeats": args.old_repeats,
            "timeout_s": args.timeout_s,
            "hard_timeout_s": 2 * args.timeout_s + 5,
        },
        "workload": {
            "answers": n,
            "distinct_pairs": len(pairs),
            "rows_without_box": sum(b is None for b in boxes),
            "kinds": kinds,
        },
        "modes": {
            "old": "every row sent to the graders, no guards (only the timers stop "
            "pathological answers): the verdict semantics before dedupe and guards",
            "guards": "every row, guards on",
            "new": "the default: each distinct (answer, reference) pair graded once, guards on",
            "note": "parse caches and reference-grouped worker scheduling are on in every "
            "mode; w0 = in-process, w2 = 2 worker processes; every mode in a fresh process",
        },
        "rows": rows,
        "refused_by_guards_by_kind": {k: v for k, v in refused_kinds.items() if v},
        "verdicts_identical_dedupe_vs_rows": all(
            row["vs_new_verdicts"]["identical"] for row in rows if row["guards"]
        ),
        "verdicts_identical_new_vs_old_except_guard_errors": all(
            row["vs_new_verdicts"]["identical_but_guard_errors"] for row in rows
        ),
    }
    out_path = Path(args.out_dir) / f"{result['name']}.json"
    write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"\nwritten: {out_path}")
    return result


def markdown_table(result: dict) -> str:
    w = result["workload"]
    st = result["settings"]
    lines = [
        f"{w['answers']} answers ({w['distinct_pairs']} distinct answer/reference pairs) on "
        f"{result['device']} ({result['cores']} cores), timers {st['timeout_s']} s; medians of "
        f"{st['repeats']} interleaved rounds ({st['old_repeats']} for the old modes)",
        "",
        "| method | graders | graded items | s (all answers) | CPU s | s / 4,000 | answers / s "
        "| timeouts | speed-up vs old, 2 workers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        where = "in-process" if r["in_process"] else f"{r['workers']} worker processes"
        speed = f"{r['speedup_vs_old_w2']:.1f}×" if r["speedup_vs_old_w2"] else "-"
        lines.append(
            f"| {r['method']} | {where} | {r['graded_items']} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {r['s_per_4000']:.1f} | {r['answers_per_s']:.0f} "
            f"| {r['timeouts']} | {speed} |"
        )
    same = result["verdicts_identical_dedupe_vs_rows"]
    same_old = result["verdicts_identical_new_vs_old_except_guard_errors"]
    lines += [
        "",
        f"verdicts identical with and without dedupe: {same}; new vs old identical except "
        f"the guards' error on refused rows: {same_old}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
