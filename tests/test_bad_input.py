"""Bad input and bounded input (issue 20): every case ends with exit 2 and one line naming the file, the field
and what is allowed -- never a traceback, a hang or a silent change. Commands run in-process (`main` returns
the exit code) except where the exit code of a real process is the point (test_subprocess_...)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import pandas as pd
import pytest
import yaml

from sim.config.errors import short
from sim.engine.metrics import reason_kind

from .helpers import GOOD, REPO

TRACE_SCENARIO = """\
model: llama-2-7b
hardware: {gpu: h100-sxm}
slo: {ttft_s: 5, tpot_s: 0.2}
workload:
  trace: {path: t.csv}
compare: [{name: none}]
"""

ALIAS_BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
                     for p, c in zip(["", *"abcdefgh"], "abcdefghi")) + "model: *i\nhardware: {gpu: a10}\n"


def run(main, *args) -> tuple[int, str, str]:
    """A command's ``main`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def sim_run(*args):
    from sim.run import main
    return run(main, *args)


# (case, scenario text, extra arguments, what the one line must contain)
BAD = [
    ("infinite rate", GOOD.replace("rate_per_s: 1}", "rate_per_s: .inf}"), [],
     "bad.yaml: workload.arrivals.rate_per_s: must be a finite number, got inf"),
    ("NaN duration", GOOD.replace("duration_s: 5", "duration_s: .nan"), [],
     "bad.yaml: workload.duration_s: must be a finite number, got nan"),
    ("rate over its range", GOOD.replace("rate_per_s: 1}", "rate_per_s: 10000000}"), [],
     "bad.yaml: workload.arrivals.rate_per_s: must be <= 1000000, got 10000000"),
    # 1e6/s x 3,000 s + a burst of 2e5/s x 10 s: 3,002,000,000 requests expected (MemoryError after 50 s before)
    ("billions of requests", GOOD.replace("rate_per_s: 1}", "rate_per_s: 1000000}").replace(
        "duration_s: 5", "duration_s: 3000\n  bursts: [{start_s: 0, duration_s: 10, rate_per_s: 200000}]"), [],
     "bad.yaml: workload: about 3,002,000,000 requests (arrivals.rate_per_s 1e+06 x duration_s 3000 + 2,000,000 "
     "in bursts), over the limit of 1,000,000"),
    ("negative seed in the file", "seed: -1\n" + GOOD, [], "bad.yaml: seed: must be >= 0, got -1"),
    ("negative --seed", GOOD, ["--seed", "-1"], "--seed: must be in [0, 2**64 - 1], got -1"),
    ("100,000 GPUs", GOOD.replace("{gpu: a10}", "{gpu: a10, num_gpus: 100000}"), [],
     "bad.yaml: hardware.num_gpus: 100,000 GPUs, over the limit of 1,024"),
    ("huge max_num_seqs", GOOD.replace("{gpu: a10}", "{gpu: a10}\nengine: {max_num_seqs: 1000000000000}"), [],
     "bad.yaml: engine.max_num_seqs: must be <= 1048576, got 1000000000000"),
    ("max_num_seqs the GPU cannot hold", GOOD.replace("{gpu: a10}", "{gpu: a10}\nengine: {max_num_seqs: 500000}"),
     [], "bad.yaml: engine: max_num_seqs 500000 and max_num_batched_tokens 8192 need 60.4 GiB of activation "
         "workspace"),
    ("deep nesting", "model: " + "[" * 5000 + "]" * 5000 + "\n", [], "bad.yaml: nested too deeply to read"),
    ("nesting past the limit", "description: " + "[" * 70 + "]" * 70 + "\n" + GOOD, [],
     "bad.yaml: description: nested more than 64 levels deep"),
    ("alias expansion", ALIAS_BOMB, [], "bad.yaml: model: more than 100,000 values once YAML aliases"),
    ("long string echoed", GOOD.replace("policy: none}", "policy: " + "x" * 100_000 + "}"), [],
     "bad.yaml: compare.0.policy: must be at most 100 characters, got 100000"),
    ("policy param of the wrong type", GOOD.replace("policy: none}", "policy: selectn-static, params: {interval: x}}"),
     [], "bad.yaml: compare.0: params.interval: must be an integer, got 'x'"),
    ("unknown policy param", GOOD.replace("policy: none}", "policy: uva, params: {gib: 2}}"), [],
     "bad.yaml: compare.0: params.gib: unknown key (allowed: offload_gib)"),
    ("offload beyond the model", GOOD.replace("policy: none}", "policy: uva, params: {offload_gib: 1e9}}"), [],
     "could not run: uva: offload_gib 1e+09 is more than the 12.06 GiB of layer weights of llama-2-7b"),
    ("line break in a key", GOOD.replace("{gpu: a10}", '{gpu: a10, "x\\u2028y": 1}'), [],
     "bad.yaml: hardware.x\\u2028y: unknown key (allowed: gpu, num_gpus"),
    ("GPUs per bus", GOOD.replace("{gpu: a10}", "{gpu: a10, gpus_per_bus: 64}"), [],
     "bad.yaml: hardware.gpus_per_bus: must be <= 16, got 64"),
    ("lognormal min above max", GOOD.replace("{kind: fixed, value: 100}",
                                             "{kind: lognormal, median: 100, sigma: 1, min: 50, max: 10}"), [],
     "bad.yaml: workload.prompt: max (10) must be >= min (50)"),
]


@pytest.mark.parametrize("case,text,extra,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_scenario_is_one_line_exit_2(tmp_path, case, text, extra, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    code, out, err = sim_run(path, "--out", tmp_path / "out", "--quiet", *extra)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, err[:2000]
    assert expect in lines[0], lines[0]
    assert out == "" and not (tmp_path / "out").exists()
    assert time.perf_counter() - t0 < 20  # refused up front, not after minutes of work


@pytest.mark.parametrize("what", ["binary", "folder"])
def test_binary_file_or_folder_as_scenario_and_as_trace(tmp_path, what):
    bad = tmp_path / "bad"
    if what == "binary":
        bad.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    else:
        bad.mkdir()
    code, _, err = sim_run(bad, "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("not a text file (a NUL byte at offset 7)" if what == "binary" else "is a folder, not a scenario file") \
        in err
    (tmp_path / "s.yaml").write_text(TRACE_SCENARIO.replace("t.csv", str(bad)))
    code, _, err = sim_run(tmp_path / "s.yaml", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("s.yaml: workload.trace.path: ")
    assert ("not a readable CSV" if what == "binary" else "is a folder, not a trace CSV") in err, err


TRACE_BAD = [  # (cell text in row 2 of 3, column, message)
    ("inf", "num_prefill_tokens", "not finite: inf"),
    ("nan", "num_prefill_tokens", "missing (empty or NaN)"),
    ("", "num_decode_tokens", "missing (empty or NaN)"),
    ("abc", "arrived_at", "not a number: 'abc'"),
    ("0", "num_decode_tokens", "a token count must be >= 1, got 0"),
    ("-5", "num_prefill_tokens", "a token count must be >= 1, got -5"),
    ("12.5", "num_decode_tokens", "not a whole number of tokens: 12.5"),
    ("1e30", "num_prefill_tokens", "a token count must be <= 16,777,216, got 1e+30"),
]


def _trace(cell: str, column: str) -> str:
    rows = [{"arrived_at": "0.0", "num_prefill_tokens": "100", "num_decode_tokens": "10"},
            {"arrived_at": "0.5", "num_prefill_tokens": "200", "num_decode_tokens": "20"},
            {"arrived_at": "1.0", "num_prefill_tokens": "300", "num_decode_tokens": "30"}]
    rows[1][column] = cell
    return "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
        f"{r['arrived_at']},{r['num_prefill_tokens']},{r['num_decode_tokens']}\n" for r in rows)


@pytest.mark.parametrize("cell,column,problem", TRACE_BAD, ids=[f"{c}:{v or 'empty'}" for v, c, _ in TRACE_BAD])
def test_bad_trace_row_names_row_and_column_or_is_dropped_and_counted(tmp_path, cell, column, problem):
    (tmp_path / "t.csv").write_text(_trace(cell, column))
    (tmp_path / "s.yaml").write_text(TRACE_SCENARIO)
    code, _, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "a", "--quiet", "--no-report")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"t.csv: row 2 (line 3), column {column}: {problem}; on_bad_rows: drop skips such rows" in err
    (tmp_path / "s.yaml").write_text(TRACE_SCENARIO.replace("{path: t.csv}", "{path: t.csv, on_bad_rows: drop}"))
    code, _, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "b", "--quiet", "--no-report")
    assert code == 0, err
    assert f"warning: s.yaml: workload.trace: dropped 1 of 3 trace rows that are not requests (on_bad_rows: drop; " \
           f"first: row 2 (line 3), column {column}: {problem})" in err
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["input"] == {"trace_rows_dropped": 1} and s["requests"] == 2
    req = pd.read_csv(tmp_path / "b" / "requests.csv")
    assert list(req.prompt_tokens) == [100, 300]  # the two good rows, unchanged (nothing clipped)


LONG = GOOD.replace("rate_per_s: 1}", "rate_per_s: 2}").replace("{kind: fixed, value: 100}",
                                                                  "{kind: uniform, low: 3000, high: 6000}")


def test_context_overflow_rejected_with_reason_and_counted(tmp_path):
    """Prompts of 3,000-6,000 tokens + 10 output on Llama-2-7B (4,096): those over the context end rejected on
    arrival with the reason, never served; counted in summary.json and in the verdict."""
    (tmp_path / "s.yaml").write_text(LONG)
    code, out, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet", "--no-report")
    assert code == 0, err
    req = pd.read_csv(tmp_path / "o" / "requests.csv")
    over = req.prompt_tokens + req.output_tokens > 4096
    assert 0 < over.sum() < len(req)
    assert (req.state[over] == "rejected").all() and req.ttft_s[over].isna().all()
    assert (req.reject_reason[over] == [f"prompt + output ({p}+10 tokens) exceed the context of 4096 tokens "
                                        "(max_model_len)" for p in req.prompt_tokens[over]]).all()
    assert (req.state[~over] == "finished").all()
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    n = int(over.sum())
    assert s["input"]["context_overflow"] == {"mode": "reject", "context_tokens": 4096, "requests": n}
    assert s["policies"]["none"]["reject_reasons"] == {
        "prompt + output (N+N tokens) exceed the context of N tokens (max_model_len)": n}
    sentence = f"{n} of {len(req)} requests exceed the 4,096-token context (prompt + output): rejected on arrival"
    assert sentence in s["verdict"][-1] and sentence in out


def test_context_overflow_truncate_cuts_the_prompt(tmp_path):
    (tmp_path / "s.yaml").write_text(LONG.replace("  duration_s: 5", "  duration_s: 5\n  context_overflow: truncate"))
    code, out, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet", "--no-report")
    assert code == 0, err
    req = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert (req.state == "finished").all() and (req.prompt_tokens + req.output_tokens <= 4096).all()
    assert (req.prompt_tokens == 4086).sum() > 0 and (req.output_tokens == 10).all()  # the prompt cut, not the output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["input"]["context_overflow"]["mode"] == "truncate"
    assert s["input"]["context_overflow"]["requests"] == (req.prompt_tokens == 4086).sum()
    assert "truncated to fit (workload.context_overflow: truncate)" in out


def test_until_tiny_gives_no_infinite_ratio(tmp_path):
    (tmp_path / "s.yaml").write_text("until_s: 1e-9\n" + GOOD.replace(
        "  - {name: none, policy: none}", "  - {name: none, policy: none}\n  - {name: ds, policy: deepspeed}"))
    code, out, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet", "--no-report")
    assert code == 0, err
    assert "\u221e" not in out and "inf\u00d7" not in out
    assert "the next best (0.0%), produced no tokens." in out


def test_reject_reasons_count_alike_reasons_together():
    """summary.json's reject_reasons group reasons that differ only in their numbers (requests.csv keeps each)."""
    assert reason_kind("TTFT SLO 10.00 s: first token predicted 10.24 s after arrival") == \
        reason_kind("TTFT SLO 10.00 s: first token predicted 10.01 s after arrival") == \
        "TTFT SLO N s: first token predicted N s after arrival"
    assert reason_kind("needs 5 KV blocks (1000+200 tokens); the pool holds at most 4,096") == \
        "needs N KV blocks (N+N tokens); the pool holds at most N"
    # numbers inside names stay: a model name is not a quantity
    assert reason_kind("interval must be in [1, 32] for llama-2-7b, got 64") == \
        "interval must be in [N, N] for llama-2-7b, got N"


def test_short_repr_is_bounded_whatever_the_input():
    x: list = ["lol"] * 9
    for _ in range(9):  # 9**10 leaves by shared references
        x = [x] * 9
    t0 = time.perf_counter()
    assert len(short(x)) < 80 and len(short("y" * 10**7)) < 80 and len(short(10**5000)) < 80
    assert time.perf_counter() - t0 < 0.1


def test_plan_bad_input(tmp_path):
    """sim.plan: errors without an 'error:' prefix, --workers 0 refused, the length mix's context overflow said."""
    from sim.planner.cli import main

    code, _, err = run(main, REPO / "scenarios" / "capacity.yaml", "--workers", "0")
    assert code == 2 and err.strip() == "--workers: must be >= 1 (leave it out for all cores), got 0"
    plan = yaml.safe_load((REPO / "scenarios" / "capacity.yaml").read_text())
    plan["burst"] = {"factor_step": 1e-9}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(plan))
    code, _, err = run(main, tmp_path / "p.yaml", "--out", tmp_path / "o")
    assert code == 2 and err.strip() == ("p.yaml: burst: (max_factor - 1) / factor_step must be <= 1000 burst "
                                         "factors, got 3,000,000,000")
    plan["burst"] = {}
    plan["models"][0]["rates_per_s"] = [1, 2, 100000]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(plan))
    code, _, err = run(main, tmp_path / "p.yaml", "--out", tmp_path / "o")
    assert code == 2 and err.startswith("p.yaml: (top level): an evaluation would simulate about 192,000,000 "
                                        "requests") and not (tmp_path / "o").exists()


def test_plan_warns_about_the_length_mix_exceeding_the_context():
    from sim.planner.config import load_plan

    notes = load_plan(REPO / "scenarios" / "capacity.yaml").notes
    note = next(n for n in notes if "(llama-2-13b)" in n)
    assert "% of the length mix's requests exceed the 4,096-token context; they are simulated as if" in note


def test_help_and_version_of_every_command():
    import sim.planner.cli
    import sim.record
    import sim.run
    import sim.search

    for mod in (sim.run, sim.planner.cli, sim.search, sim.record):
        code, out, _ = run(mod.main, "--version")
        assert code == 0 and out.startswith("memslo "), mod.__name__
        code, out, _ = run(mod.main, "--help")
        assert code == 0
        positional = out.split("positional arguments:")[1].split("options:")[0]
        assert len(positional.strip().splitlines()) >= 1 and "  " in positional.strip().splitlines()[0].strip(), \
            (mod.__name__, positional)  # the positional argument has a help text after its name


def test_subprocess_exit_codes_and_no_traceback(tmp_path):
    """The real processes: exit 2, one line, no traceback, for a binary scenario, an alias bomb, deep nesting
    and an infinite rate; --version exits 0."""
    env_py = [sys.executable, "-m", "sim.run"]
    cases = {"bin.yaml": b"\x00\x01\x02binary", "bomb.yaml": ALIAS_BOMB.encode(),
             "deep.yaml": ("model: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
             "inf.yaml": BAD[0][1].encode()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        p = subprocess.run([*env_py, str(tmp_path / name), "--out", str(tmp_path / "o")], capture_output=True,
                           cwd=REPO, timeout=60, text=True)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (name, p.stderr[-2000:])
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(name), (name, p.stderr[:500])
    p = subprocess.run([*env_py, "--version"], capture_output=True, cwd=REPO, timeout=60, text=True)
    assert p.returncode == 0 and p.stdout.startswith("memslo ")


@pytest.mark.parametrize("config,expect", [
    ("[1]", "a model config.json holds a JSON object, got list"),
    ('{"hidden_size": "abc", "num_attention_heads": 1, "num_hidden_layers": 1, "intermediate_size": 1, '
     '"vocab_size": 1}', "field 'hidden_size' must be a positive integer, got 'abc'"),
    ('{"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1000000000, "intermediate_size": 1, '
     '"vocab_size": 1}', "num_layers must be in [1, 10,000], got 1000000000"),
    ("\xff\xfe{}", "cannot read the model config: 'utf-8' codec can't decode byte 0xff"),
])
def test_bad_model_config_json(tmp_path, config, expect):
    (tmp_path / "m.json").write_text(config, encoding="latin-1")  # \xff: a byte that is not UTF-8
    (tmp_path / "s.yaml").write_text(GOOD.replace("model: llama-2-7b", "model: m.json"))
    code, _, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"s.yaml: model: {tmp_path / 'm.json'}: ") and expect in err, err


def test_search_refuses_bad_input_and_keeps_partial_results(tmp_path, monkeypatch):
    """sim.search: --workers 0 and a non-empty --out are refused (exit 2); interrupted after two of its
    simulations it writes those two and exits 130."""
    import sim.search as search

    scen = REPO / "scenarios" / "selectn_search.yaml"
    code, _, err = run(search.main, scen, "--workers", "0")
    assert code == 2 and err.strip() == "--workers: must be >= 1 (leave it out for all cores), got 0"
    calls = []
    real = search.run_point

    def interrupted_third(item):
        calls.append(item["interval"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(item)

    monkeypatch.setattr(search, "run_point", interrupted_third)
    code, out, err = run(search.main, scen, "--workers", "1", "--out", tmp_path / "o")
    assert code == 130, err
    assert "interrupted after 2 of 96 simulations: partial results written to" in err
    df = pd.read_csv(tmp_path / "o" / "search.csv")
    assert sorted(set(df.interval)) == sorted(calls[:2]) and len(df) == 2 * 3  # 2 simulations x 3 SLO levels
    assert "interrupted, 2 of 96 simulations" in (tmp_path / "o" / "search.html").read_text()
    code, _, err = run(search.main, scen, "--workers", "1", "--out", tmp_path / "o")
    assert code == 2 and "output folder is not empty (search.csv, search.html); use --force" in err
