"""A pytest session that runs no grid cell leaves the results folder alone: `pytest tests` once
rewrote the `results/summary.*` of a user's grid run, because under xdist a test whose id looks like a cell id
(`test_x[bert-classification-general]`) counted as a selected grid cell. Now only cells that the
`transfer_bench` fixture ran lead to a summary."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_pytest

PLAIN_TESTS = '''
import pytest


@pytest.mark.parametrize("cell_id", ["bert-classification-general", "roberta-sentiment-legal"])
def test_looks_like_a_cell(cell_id):
    assert cell_id


def test_plain():
    pass
'''


def snapshot(folder: Path) -> dict:
    """Every path under `folder` (and the folder itself) with its modification time and bytes."""
    out = {".": folder.stat().st_mtime_ns}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_a_session_without_grid_cells_touches_no_results_folder(tmp_path, workers):
    tests = tmp_path / "suite" / "test_plain.py"
    tests.parent.mkdir()
    tests.write_text(PLAIN_TESTS, encoding="utf-8")
    results = tmp_path / "results"
    (results / "cells").mkdir(parents=True)
    for name in ("summary.md", "summary.json", "cells/bert-sentiment-legal.json"):
        (results / name).write_text(f"{name} of a user's grid run\n", encoding="utf-8")
    past = 1_600_000_000
    for p in [*results.rglob("*"), results]:
        os.utime(p, (past, past))
    before = snapshot(results)
    absent = tmp_path / "never-created"
    for folder in (results, absent):
        proc = run_pytest(str(tests), "-q", "-p", "no:cacheprovider", "--results-dir", str(folder), *workers,
                          timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "transfer-bench summary" not in proc.stdout
    assert snapshot(results) == before
    assert not absent.exists()
