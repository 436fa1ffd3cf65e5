"""Signals (issue 20): SIGTERM handled like Ctrl-C, a second signal during the write, Ctrl-C during the
planner's start-up, and pool workers that never outlive their parent. Real processes and real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import REPO

pytestmark = pytest.mark.timeout(180)

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
LONG = ("model: llama-2-7b\nhardware: {gpu: h100-sxm}\nslo: {ttft_s: 2, tpot_s: 0.1}\n"
        "workload: {duration_s: 1500, arrivals: {kind: poisson, rate_per_s: 40}, prompt: {kind: fixed, value: 500},"
        " output: {kind: fixed, value: 100}}\n"
        "compare: [{name: none}, {name: i8, policy: selectn-static, params: {interval: 8}}]\n")
FILES = ("scenario.yaml", "summary.json", "requests.csv", "timeline.json", "report.html", "run_info.json")


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout: float = 60.0, step: float = 0.01) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(step)


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def simulating(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """``sim.run`` on LONG (60,000 requests), returned once the first policy is simulating."""
    (tmp_path / "long.yaml").write_text(LONG)
    proc = start(["-m", "sim.run", "long.yaml", "--out", "out", *extra], tmp_path)
    line = proc.stderr.readline()
    assert re.match(r"\[1/2] none: simulating \d{5} requests", line), line
    time.sleep(0.3)
    return proc


def test_sigterm_on_run_writes_partial_results_exit_143(tmp_path):
    proc = simulating(tmp_path)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated: partial results written to out" in stderr and "Traceback" not in stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["interrupted"] is True and s["not_run"] == ["i8"]
    m = s["policies"]["none"]
    assert 0 < m["finished"] < m["requests"] and m["reject_reasons"]["interrupted"] == m["rejected"]
    assert all((tmp_path / "out" / f).exists() for f in FILES) and not (tmp_path / "out" / "INCOMPLETE").exists()
    assert "not run" in stdout


def test_second_signal_during_the_write_lets_it_finish(tmp_path):
    proc = simulating(tmp_path)
    proc.send_signal(signal.SIGINT)  # stops the simulation; the folder is then written
    wait_for(lambda: (tmp_path / "out" / "INCOMPLETE").exists())
    proc.send_signal(signal.SIGINT)  # during the write: it finishes first
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "out: finishing the run folder first (a second signal stops the writing)" in stderr
    assert "interrupted: partial results written to out" in stderr and "Traceback" not in stderr
    assert all((tmp_path / "out" / f).exists() for f in FILES) and not (tmp_path / "out" / "INCOMPLETE").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["interrupted"] is True


def test_two_more_signals_during_the_write_leave_a_marked_partial_folder(tmp_path):
    proc = simulating(tmp_path)
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: (tmp_path / "out" / "INCOMPLETE").exists())
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # a third signal stops the writing
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr  # the first signal decides the code
    assert "terminated while writing: out is incomplete (see out/INCOMPLETE)" in stderr
    assert "Traceback" not in stderr
    out = tmp_path / "out"
    marker = (out / "INCOMPLETE").read_text()
    assert marker.startswith("This folder is incomplete (writing stopped: interrupted). Files present are whole")
    missing = marker.split("not written: ")[1].rstrip(".\n").split(", ")
    assert "run_info.json" in missing and not (out / "run_info.json").exists()
    assert all((out / f).exists() != (f in missing) for f in FILES)  # each file: whole, or listed as missing
    assert not list(out.glob(".*.tmp-*"))  # no half-written temporary file


PLAN = """
name: sig
seed: 1
models:
  - {name: m, model: llama-2-7b, rates_per_s: [20, 40], ttft_s: 2.0, tpot_s: 0.1}
workload:
  prompt: {kind: fixed, value: 512}
  output: {kind: fixed, value: 128}
  duration_s: 600
  min_requests: 100
gpus:
  - {gpu: a100-80g, usd_per_hour: 2.0}
  - {gpu: h100-sxm, usd_per_hour: 3.0}
counts: [1, 2]
host_memory_gib_per_gpu: [64]
strategies:
  - {name: plain, policy: none}
"""


def test_sigterm_on_plan_stops_its_workers(tmp_path):
    """SIGTERM while two pool workers simulate: exit 143 within seconds, tables of what was done written, and
    no worker left behind."""
    (tmp_path / "p.yaml").write_text(PLAN)
    proc = start(["-m", "sim.plan", "p.yaml", "--out", "out", "--workers", "2"], tmp_path)
    wait_for(lambda: len(children(proc.pid)) >= 2)
    workers = children(proc.pid)
    time.sleep(1.0)  # mid-simulation
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert time.monotonic() - t0 < 20  # the simulations in flight are not waited for
    assert re.search(r"terminated after \d+ simulations?: partial results written to out \(run again with --resume",
                     stderr), stderr
    assert "Traceback" not in stderr and "sustains" not in stdout  # no verdict claimed from a partial search
    wait_for(lambda: not any(alive(w) for w in workers), timeout=10)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["complete"] is False and s["models"]["m"]["verdict"].startswith("Interrupted")


def test_ctrl_c_during_plan_start_up_writes_nothing(tmp_path):
    proc = start(["-m", "sim.plan", str(REPO / "scenarios" / "capacity.yaml"), "--out", "out", "--workers", "1"],
                 tmp_path)
    wait_for(lambda: "start-up: probing whether each of" in proc.stderr.readline(), timeout=120)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert re.search(r"interrupted during the start-up \(probing configurations: \d+ of \d+ done\): nothing "
                     "simulated, nothing written", stderr), stderr
    assert "Traceback" not in stderr and stdout == "" and not (tmp_path / "out").exists()


def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    """SIGKILL leaves no handler to run: the workers notice their parent is gone and exit."""
    code = ("import time; from sim.pools.local import LocalPool\n"
            "p = LocalPool(2).__enter__(); list(p.map(time.sleep, [0.01, 0.01])); print('ready', flush=True)\n"
            "list(p.map(time.sleep, [100, 100]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    workers = children(proc.pid)
    assert len(workers) >= 2
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=10)
