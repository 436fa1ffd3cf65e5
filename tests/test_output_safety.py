"""Safe output (issue 20): run-folder names made safe, --out checked before simulating and refused when it
holds files (unless --force), every file written whole or not at all, a failed write naming its file and
keeping what was written."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

from sim.output.files import IncompleteMarker, OutputError, safe_name, write_atomic

from .test_bad_input import GOOD, run, sim_run
from .test_signals import LONG

FILES = ("scenario.yaml", "summary.json", "requests.csv", "timeline.json", "report.html", "run_info.json")


@pytest.mark.parametrize("name,folder", [("../../../x", "x"), ("a/b", "a_b"), ("..", "scenario"),
                                         (".hidden", "hidden"), ("burst", "burst"), ("run v2.1", "run_v2.1")])
def test_names_become_one_folder_under_reports(tmp_path, monkeypatch, name, folder):
    assert safe_name(name, "scenario") == folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(f"name: {json.dumps(name)}\n" + GOOD)
    code, out, err = sim_run("s.yaml", "--quiet", "--no-report")
    assert code == 0, err
    [made] = list((tmp_path / "reports").iterdir())
    assert made.name.startswith(f"{folder}-") and (made / "summary.json").exists()
    assert f"wrote reports/{made.name}/ (scenario.yaml, summary.json, requests.csv, timeline.json, run_info.json)" \
        in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "s.yaml"]  # nothing outside reports/


def test_out_into_a_non_empty_folder_needs_force(tmp_path):
    (tmp_path / "s.yaml").write_text(GOOD)
    assert sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet")[0] == 0
    before = (tmp_path / "o" / "summary.json").read_bytes()
    code, out, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet", "--seed", "5")
    assert code == 2 and out == ""
    assert err.strip() == (f"{tmp_path / 'o'}: output folder is not empty (report.html, requests.csv, run_info.json, "
                           "scenario.yaml and 2 more); use --force to replace its files, or another --out")
    assert (tmp_path / "o" / "summary.json").read_bytes() == before  # untouched
    code, _, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet", "--seed", "5", "--force")
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["seed"] == 5
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(FILES)  # no temporary or marker file


def test_unwritable_out_is_refused_before_simulating(tmp_path):
    """--out under a file: exit 1 at once, not after simulating 60,000 requests."""
    (tmp_path / "long.yaml").write_text(LONG)
    (tmp_path / "file").write_text("x")
    t0 = time.perf_counter()
    code, out, err = sim_run(tmp_path / "long.yaml", "--out", tmp_path / "file" / "out")
    assert code == 1 and out == ""
    assert err.strip() == f"{tmp_path / 'file' / 'out'}: cannot write the output folder: Not a directory"
    assert time.perf_counter() - t0 < 10


def test_a_failed_write_names_the_file_and_keeps_what_was_written(tmp_path, monkeypatch):
    """The disk fills while timeline.json is written: that file is not left truncated, the error names it,
    the files before it stay whole, and INCOMPLETE lists what is missing."""
    import sim.output.run_folder as rf

    def full_disk(path, *args, **kw):
        Path(path).write_text('{"traceEvents": [')  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rf, "write_merged_chrome_trace", full_disk)
    (tmp_path / "s.yaml").write_text(GOOD)
    code, out, err = sim_run(tmp_path / "s.yaml", "--out", tmp_path / "o", "--quiet")
    o = tmp_path / "o"
    assert code == 1 and out == ""
    assert err.strip() == (f"{o / 'timeline.json'}: cannot write: No space left on device; the files written "
                           "before it are kept")
    assert sorted(p.name for p in o.iterdir()) == ["INCOMPLETE", "requests.csv", "scenario.yaml", "summary.json"]
    assert json.loads((o / "summary.json").read_text())["requests"] > 0  # whole
    assert (o / "INCOMPLETE").read_text() == (
        f"This folder is incomplete (writing stopped: {o / 'timeline.json'}: cannot write: No space left on device). "
        "Files present are whole; not written: timeline.json, report.html, run_info.json.\n")


def test_write_atomic_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")

    def interrupted(p: Path) -> None:
        p.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    def denied(p: Path) -> None:
        p.write_text("half")
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(OutputError, match=r"f.json: cannot write: Permission denied"):
        write_atomic(target, denied)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new"


def test_incomplete_marker_lists_what_is_missing(tmp_path):
    m = IncompleteMarker(tmp_path, ["a", "b", "c"])
    m.wrote("a")
    m.stopped("writing stopped: interrupted")
    assert (tmp_path / "INCOMPLETE").read_text() == ("This folder is incomplete (writing stopped: interrupted). "
                                                     "Files present are whole; not written: b, c.\n")
    m.done()
    assert not (tmp_path / "INCOMPLETE").exists()


def test_plan_refuses_a_folder_of_an_earlier_plan_without_resume_or_force(tmp_path):
    from sim.planner.cli import main

    from .helpers import REPO

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "configs.csv").write_text("x")
    code, out, err = run(main, REPO / "scenarios" / "capacity.yaml", "--out", tmp_path / "o", "--quiet")
    assert code == 2 and out == ""
    assert err.strip().endswith(f"{tmp_path / 'o'}: output folder is not empty (configs.csv); --resume continues the "
                                "plan there, --force starts it over, or use another --out")
