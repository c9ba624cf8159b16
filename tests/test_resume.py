"""Resume: a run killed with SIGKILL in the middle of a cell is finished by the next run, which retrains only
what was unfinished; damaged records and checkpoints are redone, never read. Real `pytest bench` runs of the
micro profile in subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, grid_command, grid_run, records

from harness.results.record import record_path

CELLS = ("--models", "bert", "--tasks", "classification,sentiment", "--domains", "general,medical",
         "-k", "not sentiment-medical")
FIRST, SECOND, THIRD = "bert-classification-general", "bert-classification-medical", "bert-sentiment-general"

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run(tmp: Path, *args) -> dict:
    run = grid_run(tmp, *CELLS, *args)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return records(tmp / "results")


def _stamp(tmp: Path, cell: str) -> tuple:
    path = record_path(tmp / "results", cell)
    return path.stat().st_mtime_ns, path.read_bytes()


def _kill_after_first_record(tmp: Path) -> None:
    """Start the grid and SIGKILL its whole process group as soon as the first cell's record exists, i.e.
    while the second cell is loading or training."""
    argv, env = grid_command(tmp / "results", tmp / "cache", *CELLS, "-n", "0")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = record_path(tmp / "results", FIRST)
    try:
        deadline = time.monotonic() + 900
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the grid ended before it could be killed"
        assert first.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    _kill_after_first_record(tmp)
    before = records(tmp / "results")
    first = _stamp(tmp, FIRST)
    after = _run(tmp, "-n", "0")
    return tmp, before, first, after


def test_killed_run_left_only_finished_records(killed_then_resumed):
    _, before, _, _ = killed_then_resumed
    assert set(before) == {FIRST}


def test_next_run_finishes_the_grid_and_retrains_only_the_unfinished_cells(killed_then_resumed):
    tmp, _, first, after = killed_then_resumed
    assert set(after) == {FIRST, SECOND, THIRD}
    assert _stamp(tmp, FIRST) == first  # reported from its record, not trained again
    assert after[FIRST]["intermediate"][0]["trained_here"]
    # the classification intermediate model finished before the kill: reused; sentiment's is new
    assert not after[SECOND]["intermediate"][0]["trained_here"]
    assert after[THIRD]["intermediate"][0]["trained_here"]


def test_damaged_record_and_checkpoint_are_redone_and_rerun_retrains(killed_then_resumed):
    tmp, _, _, after = killed_then_resumed
    path = record_path(tmp / "results", SECOND)
    path.write_text(path.read_text()[:100])  # a record cut short (e.g. a full disk in a copy)
    key = after[SECOND]["intermediate_key"]
    [checkpoint] = (tmp / "cache" / "intermediate").glob(f"*-{key}/body.safetensors")
    with open(checkpoint, "r+b") as f:
        f.truncate(checkpoint.stat().st_size // 2)
    untouched = _stamp(tmp, THIRD)
    redone = _run(tmp, "-n", "0")
    assert redone[SECOND]["metrics_per_seed"] == after[SECOND]["metrics_per_seed"]
    assert redone[SECOND]["intermediate"][0]["trained_here"]  # the truncated checkpoint was trained again
    assert _stamp(tmp, THIRD) == untouched

    stamps = {cell: _stamp(tmp, cell)[0] for cell in redone}
    rerun = _run(tmp, "-n", "0", "--rerun")
    assert all(_stamp(tmp, cell)[0] != stamps[cell] for cell in rerun)
    assert all(rerun[c]["metrics_per_seed"] == redone[c]["metrics_per_seed"] for c in rerun)
