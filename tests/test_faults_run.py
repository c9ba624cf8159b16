"""Run faults, each with the real operation: a worker killed with SIGKILL, Ctrl-C, two runs into the same
folders at once, problems found before training (corrupt baselines, unwritable results folder, missing
--data-dir, bad --seeds), `-k` from the repository root and spec domains under --strict-markers. Each checks
the message, the exit code and that nothing finished was lost. Grid runs use the micro profile in subprocesses."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import CONTRACTS, REPO, grid_command, grid_run, records, run_pytest, write_jsonl
from recordgen import make_record, write_records

from harness.results.record import record_path

# three model-task groups of one cell each: under -n 2 the first worker gets the first and the third
THREE = ("--models", "bert", "--domains", "general")
FIRST, SECOND, THIRD = "bert-classification-general", "bert-sentiment-general", "bert-similarity-general"
USAGE_ERROR = 4


def _start(tmp: Path, *args, hold: str | None = None) -> subprocess.Popen:
    """The micro grid in the background (output in tmp/out.txt); with `hold`, the process running that cell
    writes its pid to tmp/held and waits (tests/micro_profile.py)."""
    argv, env = grid_command(tmp / "results", tmp / "cache", *args)
    env["PYTHONFAULTHANDLER"] = "1"  # a hang's SIGABRT (_finish) prints where each thread was
    if hold:
        env.update(MICRO_HOLD_CELL=hold, MICRO_HOLD_FILE=str(tmp / "held"))
    out = open(tmp / "out.txt", "w")
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _held_pid(tmp: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 600
    while not (tmp / "held").exists() or not (tmp / "held").read_text():
        assert proc.poll() is None, (tmp / "out.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "the held cell never started"
        time.sleep(0.05)
    return int((tmp / "held").read_text())


def _finish(proc: subprocess.Popen, tmp: Path, timeout: float) -> str:
    """Wait for the run; a run still going after `timeout` seconds is a hang: killed, and the test fails."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER (see _start): every thread's stack into out.txt
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the group's other processes, if any are left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out = (tmp / "out.txt").read_text().split("\nExtension modules:")[0]  # faulthandler's list of 200 names
        pytest.fail(f"the run hung (killed after {timeout}s): {out[-6000:]}")
    return (tmp / "out.txt").read_text()


def _summary(tmp: Path) -> dict:
    entries = json.loads((tmp / "results" / "summary.json").read_text())["cells"]
    return {e["cell"]: e["status"] for e in entries}


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR:")]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_worker_fails_its_cell_and_the_others_finish(tmp_path):
    """SIGKILL the worker running FIRST while it still holds THIRD: the replacement worker must get THIRD and
    run it (pytest-xdist 3.8.0's loadgroup left it waiting forever), FIRST fails once and is not retried."""
    proc = _start(tmp_path, *THREE, "-n", "2", hold=FIRST)
    os.kill(_held_pid(tmp_path, proc), signal.SIGKILL)
    out = _finish(proc, tmp_path, timeout=300)
    assert proc.returncode == 1, out[-3000:]
    assert f"cell {FIRST}: worker gw" in out and "killed by signal 9 (SIGKILL) while running it" in out
    assert "2 passed" in out and "1 failed" in out, out[-2000:]
    assert set(records(tmp_path / "results")) == {SECOND, THIRD}
    assert _summary(tmp_path) == {FIRST: "missing", SECOND: "ok", THIRD: "ok"}


class FakeNode:
    """What the scheduler sees of an xdist worker: the items it is sent, and whether it was told to stop."""

    def __init__(self, name: str):
        self.sent, self.shutting_down = [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices):
        self.sent += indices

    def shutdown(self):
        self.shutting_down = True


def _two_workers(ids: list[str]):
    """The plugin's scheduler with two workers that collected `ids`, after its first schedule() call."""
    from harness.pytest.selection import CellGroupScheduling

    config = SimpleNamespace(getvalue=lambda name: ["popen", "popen"], option=SimpleNamespace(loadscopereorder=True))
    sched = CellGroupScheduling(config)
    first, second = FakeNode("gw0"), FakeNode("gw1")
    for node in (first, second):
        sched.add_node(node)
        sched.add_node_collection(node, ids)
    sched.schedule()
    return sched, first, second


def test_scheduler_gives_a_replacement_worker_the_rest_and_lets_it_finish():
    """The scheduling of the test above without processes: the replacement must be sent the remaining cell and
    told to shut down (a worker runs its last item only then), and the crashed cell is not sent again."""
    ids = [f"bench/test_transfer.py::test_transfer[{c}]" for c in (FIRST, SECOND, THIRD)]
    sched, first, second = _two_workers(ids)
    assert (first.sent, second.sent, second.shutting_down) == ([0, 2], [1], True)
    assert sched.remove_node(first) == ids[0]  # crashed in FIRST, with THIRD still to run
    replacement = FakeNode("gw2")
    sched.add_node(replacement)
    sched.add_node_collection(replacement, ids)
    sched.schedule()
    assert replacement.sent == [2] and replacement.shutting_down
    sched.mark_test_complete(second, 1)
    sched.mark_test_complete(replacement, 2)
    assert sched.tests_finished and not sched.has_pending


def test_scheduler_starts_every_group_before_a_second_cell_of_any():
    """Cells are units: each worker first gets the first cell of a group nobody has started (the one that trains
    the group's intermediate models), then the next cell in collection order; a worker holds two at most."""
    cells = [f"{g}-{d}" for g in ("bert-classification", "xlnet-sentiment") for d in ("general", "legal", "medical")]
    ids = [f"bench/test_transfer.py::test_transfer[{c}]" for c in cells]
    sched, first, second = _two_workers(ids)
    sched.schedule()  # as xdist does once the collections are in: nothing more while each holds two
    assert (first.sent, second.sent) == ([0, 1], [3, 2])
    sched.mark_test_complete(second, 3)
    assert second.sent == [3, 2, 4]
    for node, index in ((first, 0), (first, 1), (second, 2), (second, 4)):
        sched.mark_test_complete(node, index)
    assert sorted(first.sent + second.sent) == list(range(6)) and first.shutting_down and second.shutting_down
    sched.mark_test_complete(first, 5)
    assert sched.tests_finished


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_keeps_finished_records_and_lists_unrun_cells_as_missing(tmp_path):
    """SIGINT while the second cell runs: exit code 2, the first cell's record and a record of an earlier run
    in the same folder are kept and summarised, the interrupted and the unrun cell are missing."""
    earlier = make_record("roberta", "classification", "general", profile="micro")
    write_records(tmp_path / "results", [earlier])
    before = record_path(tmp_path / "results", earlier["cell"]).read_bytes()
    proc = _start(tmp_path, *THREE, "-n", "0", hold=SECOND)
    os.kill(_held_pid(tmp_path, proc), signal.SIGINT)
    out = _finish(proc, tmp_path, timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert "KeyboardInterrupt" in out
    assert set(records(tmp_path / "results")) == {FIRST, earlier["cell"]}
    assert record_path(tmp_path / "results", earlier["cell"]).read_bytes() == before
    summary = _summary(tmp_path)
    assert {c for c, s in summary.items() if s == "ok"} == {FIRST, earlier["cell"]}
    assert {SECOND, THIRD} <= {c for c, s in summary.items() if s == "missing"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_runs_at_once_into_the_same_folders(tmp_path):
    """Two runs of the same cells share results and cache folders: both pass, every record is whole, the shared
    intermediate model is trained once, no temporary file is left."""
    cells = ("--models", "bert", "--tasks", "classification", "--domains", "general,medical")
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        argv, env = grid_command(tmp_path / "results", tmp_path / "cache", *cells, "-n", "0")
        runs.append((subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(tmp_path / name / "out.txt", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True), tmp_path / name))
    for proc, folder in runs:
        out = _finish(proc, folder, timeout=600)
        assert proc.returncode == 0, out[-3000:]
    found = records(tmp_path / "results")
    assert set(found) == {"bert-classification-general", "bert-classification-medical"}
    trained = sum(e["trained_here"] for r in found.values() for e in r["intermediate"])
    assert trained <= 1  # the second run found the model, or both cells' records, already there
    assert not [p for p in (tmp_path / "results").rglob(".*") if p.is_file()]
    assert set(_summary(tmp_path)) == set(found)


def _usage_error(tmp: Path, *args, baselines: Path | None = None, seeds: bool = True) -> str:
    """Run the grid expecting a usage error before anything trains; return the one `ERROR:` line. With
    `seeds=False` the command leaves --seeds to the ini file."""
    extra = ["--baselines", str(baselines)] if baselines else []
    run = grid_run(tmp, *THREE, *args, *extra, seeds="1" if seeds else None, timeout=300)
    assert run.returncode == USAGE_ERROR, run.stdout[-2000:] + run.stderr[-2000:]
    (line,) = _error_lines(run.stderr)
    assert "Traceback" not in run.stdout + run.stderr
    assert not (tmp / "cache" / "intermediate").exists()  # nothing trained
    return line


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_corrupt_baselines_stop_the_run_before_training(tmp_path, workers):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    (baselines / "micro.json").write_text("{ broken", encoding="utf-8")
    write_records(tmp_path / "results", [make_record("bert", "classification", "general", profile="micro")])
    before = record_path(tmp_path / "results", FIRST).read_bytes()
    line = _usage_error(tmp_path, "-n", workers, baselines=baselines)
    assert str(baselines / "micro.json") in line and "not valid JSON" in line
    assert record_path(tmp_path / "results", FIRST).read_bytes() == before
    assert (baselines / "micro.json").read_text() == "{ broken"


@pytest.fixture
def read_only(tmp_path):
    """`read_only(folder)` makes a folder unwritable: chmod, or for root (whom chmod does not stop) the
    immutable attribute; the test skips where neither works. Undone at the end."""
    undo = []

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        undo.append(lambda: folder.chmod(0o755))
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"running as root and chattr +i failed ({done.stderr.decode().strip()})")
            undo.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    yield make
    for step in reversed(undo):
        step()


@pytest.mark.slow
@pytest.mark.subprocess
def test_unwritable_results_folder_stops_the_run_before_training(tmp_path, read_only):
    results = tmp_path / "results"
    write_records(results, [make_record("bert", "classification", "general", profile="micro")])
    before = record_path(results, FIRST).read_bytes()
    read_only(results)
    line = _usage_error(tmp_path, "-n", "2")
    assert line.startswith(f"ERROR: --results-dir {results}: cannot write there (")
    assert record_path(results, FIRST).read_bytes() == before


@pytest.mark.slow
@pytest.mark.subprocess
def test_missing_data_dir_stops_the_run_in_one_line(tmp_path):
    line = _usage_error(tmp_path, "-n", "2", "--data-dir", str(tmp_path / "nowhere"))
    assert line.startswith(f"ERROR: --data-dir {tmp_path / 'nowhere'}: no such folder")


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_spec_under_xdist_is_one_line(tmp_path):
    """The controller loads the spec before any worker starts (the workers' errors were an INTERNALERROR)."""
    spec = tmp_path / "spec.toml"
    spec.write_text("[[dataset]]\n", encoding="utf-8")
    line = _usage_error(tmp_path, "-n", "2", "--spec", str(spec))
    assert line.startswith(f"ERROR: {spec}: [[dataset]] 1 key 'name': missing")


@pytest.mark.parametrize("value, message", [("0", "at least one seed"), ("", "expected a count"),
                                            ("2,x", "expected a count")])
@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_seeds_are_a_usage_error(tmp_path, value, message):
    line = _usage_error(tmp_path, "--seeds", value)
    assert f"--seeds {value!r}" in line and message in line


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_seeds_in_the_ini_file_are_a_usage_error(tmp_path):
    assert "--seeds '0'" in _usage_error(tmp_path, "-o", "seeds=0", seeds=False)


def _collect(tmp: Path, *args) -> subprocess.CompletedProcess:
    # `--opt=value`: a bare value outside the repository would take part in pytest's choice of rootdir
    return run_pytest("--collect-only", "-q", "-p", "no:hypothesispytest", f"--cache-dir={tmp / 'cache'}",
                      f"--results-dir={tmp / 'results'}", *args, timeout=300)


@pytest.mark.slow
@pytest.mark.subprocess
def test_dash_k_from_the_repository_root_selects_only_grid_cells(tmp_path, tiny_corpora):
    run = _collect(tmp_path, "-k", "legal", f"--data-dir={tiny_corpora}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    selected = [line for line in run.stdout.splitlines() if "::" in line]
    assert sorted(selected) == sorted(f"bench/test_transfer.py::test_transfer[{m}-{t}-legal]"
                                      for m in ("bert", "roberta", "xlnet")
                                      for t in ("classification", "sentiment", "similarity"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_spec_domains_are_registered_markers(tmp_path, tiny_corpora):
    """A new domain from --spec: no unknown-mark warning (made an error here), --strict-markers collects,
    and `-m DOMAIN` selects its cells."""
    write_jsonl(tmp_path / "contracts" / "train.jsonl", CONTRACTS)
    write_jsonl(tmp_path / "contracts" / "test.jsonl", CONTRACTS[:4])
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[[dataset]]\nname = "contracts"\ntask = "classification"\ndomain = "finance"\n'
                    f'path = "{tmp_path / "contracts"}"\n', encoding="utf-8")
    run = _collect(tmp_path, "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning", "-m", "finance",
                   f"--spec={spec}", f"--data-dir={tiny_corpora}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    selected = [line for line in run.stdout.splitlines() if "::" in line]
    assert len(selected) == 9 and all(line.endswith("-finance]") for line in selected)  # 3 models x 3 tasks
    assert "PytestUnknownMarkWarning" not in run.stdout + run.stderr
