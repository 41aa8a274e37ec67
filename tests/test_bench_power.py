"""benchmarks/bench_power.py end to end with tiny settings: the MH-vs-reference rows and the
temperature / MH / SMC comparison land in the JSON with sane values (a few seconds)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CAP, PARTICLES, REPEATS = 8, 4, 2


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_power
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path_factory.mktemp("bench_power")
    argv = [
        "--model", "toy", "--device", "cpu", "--batch-sizes", "1,2",
        "--reference-problems", "1", "--repeats", str(REPEATS), "--max-new-tokens", str(CAP),
        "--block-size", "4", "--mcmc-steps", "1", "--prompt-len", "4",
        "--compare-batches", "1,3", "--smc-particles", str(PARTICLES),
        "--smc-ess-threshold", "0.7", "--name", "tiny", "--out-dir", str(out),
    ]  # fmt: skip
    returned = bench_power.main(argv)
    written = json.loads((out / "tiny.json").read_text())
    assert written == json.loads(json.dumps(returned))
    return written, bench_power.markdown_table(returned)


def test_mh_vs_reference_rows_are_kept(result):
    res, _ = result
    methods = [r["method"] for r in res["rows"]]
    assert methods == ["batched (batch 1)", "batched (batch 2)", "reference (one at a time)"]
    for row in res["rows"]:
        assert row["wall_s"] > 0 and row["s_per_problem"] > 0 and row["speedup_vs_reference"] > 0
        assert len(row["speedup_per_repeat"]) == REPEATS
    assert res["speedup_batch32_vs_reference"] is None  # no batch 32 in this run
    assert res["settings"]["smc_particles"] == PARTICLES
    assert res["settings"]["smc_ess_threshold"] == 0.7


def test_comparison_same_prompts_cap_and_full_length_answers(result):
    res, table = result
    comp = res["comparison"]
    assert comp["batches"] == [1, 3] and comp["headline_batch"] == 3 and comp["eos_masked"]
    assert comp["max_new_tokens"] == CAP
    smc = comp["methods"]["SMC"]
    assert (smc["particles"], smc["ess_threshold"], smc["alpha"]) == (PARTICLES, 0.7, 4.0)
    assert smc["proposal_temperature"] == comp["methods"]["temperature"]["T"] == 0.25
    control = f"temperature ×{PARTICLES} rows"
    rows = {(r["method"], r["batch"]): r for r in comp["rows"]}
    assert set(rows) == {(m, b) for m in ("temperature", "MH", "SMC", control) for b in (1, 3)}
    for (method, b), r in rows.items():
        assert r["prompts"] == b
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["s_per_answer"] > 0
        assert r["decode_tokens_per_s"] > 0
        assert len(r["wall_s_all"]) == len(r["time_ratio_vs_temperature_per_round"]) == REPEATS
        assert r["time_ratio_vs_temperature"] > 0
        assert r["new_tokens_per_output"] == CAP  # EOS masked: every answer runs to the cap
        temp = rows[("temperature", b)]
        assert temp["tokens_decoded_per_answer"] == CAP
        assert temp["time_ratio_vs_temperature"] == 1.0
        if method in ("SMC", control):  # every particle decodes every token
            assert r["tokens_decoded_per_answer"] == PARTICLES * temp["tokens_decoded_per_answer"]
        if method == "MH":  # the answer and every proposal's suffix
            assert r["tokens_decoded_per_answer"] > CAP
    assert rows[(control, 3)]["outputs_per_prompt"] == PARTICLES
    assert rows[("SMC", 3)]["outputs_per_prompt"] == 1
    headline = rows[("SMC", 3)]["time_ratio_vs_temperature"]
    assert res["smc_vs_temperature_s_per_answer"] == headline
    assert res["mh_vs_temperature_s_per_answer"] == rows[("MH", 3)]["time_ratio_vs_temperature"]
    assert "| SMC | 3 |" in table and "| temperature | 1 |" in table
