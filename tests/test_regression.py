"""The baseline check against real cells, and the determinism it needs: `pytest bench` runs in subprocesses.

Profile `regress` (tests/regression_profile.py): the tiny profile, one seed; with --degrade-intermediate TASK
the intermediate training set of TASK has shuffled labels. Three cells of two model-task groups:
- recorded: the cells in grid order, serially, --update-baselines into a fresh baselines folder;
- parallel: the same under `-n 2` (one group per worker), fresh cache, --strict-baselines;
- reversed: the cells in reverse order, serially, fresh cache, --strict-baselines;
- alone: the legal cell by itself, fresh cache, --strict-baselines;
- degraded: the cells with the classification intermediate set's labels shuffled, checked against the baseline:
  the classification cell must fail with a table of what changed and the sentiment cells must pass. This is
  the power case of the baseline rule on a real regression (docs/statistics.md: the baseline check).
Further runs reuse the recorded results (finished records are not trained again) to check what happens with
no baseline, with --strict-baselines, and with a corrupt baseline file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import grid_run, records, run_harness

from harness.results.baselines import baseline_path

CLASSIFICATION, GENERAL, SHIFTED = "bert-classification-general", "bert-sentiment-general", "bert-sentiment-legal"
CELLS = [CLASSIFICATION, GENERAL, SHIFTED]
NUMBERS = ("metrics", "metrics_per_seed", "gain")
# every test here on one xdist worker, so each subprocess run happens once
pytestmark = [pytest.mark.xdist_group("regression"), pytest.mark.slow, pytest.mark.subprocess]


def bench(out: Path, cells, baselines: Path, *extra, cache: Path | None = None) -> tuple[int, str]:
    """`pytest bench` on the regress profile for these cells, in this order, results under `out`;
    (exit code, output)."""
    proc = grid_run(out, "--baselines", str(baselines), "-v", "-rfEp", *extra, cache=cache, profile="regress",
                    paths=[f"bench/test_transfer.py::test_transfer[{c}]" for c in cells], timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def record(out: Path, cell: str) -> dict:
    return records(out / "results")[cell]


def outcomes(output: str) -> dict:
    """cell -> PASSED/FAILED (the short test summary)."""
    return {m[2]: m[1] for m in re.finditer(r"^(PASSED|FAILED) \S+::test_transfer\[([\w-]+)\]", output, re.M)}


def order(output: str) -> list[str]:
    """The cells in the order they ran (pytest -v progress lines of a run without xdist)."""
    return re.findall(r"^\S+::test_transfer\[([\w-]+)\] (?:PASSED|FAILED)", output, re.M)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, baselines) -> Path:
    out = tmp_path_factory.mktemp("recorded")
    code, output = bench(out, CELLS, baselines, "--update-baselines")
    assert code == 0, output
    assert f"recorded 3 cell(s) in {baseline_path(baselines, 'regress')}" in output
    return out


@pytest.fixture(scope="module")
def checked_runs(tmp_path_factory, baselines, recorded) -> dict:
    """Fresh caches (tokenizers and intermediate models trained again) and results folders: parallel,
    reversed and alone, each checked strictly."""
    runs = {}
    for name, cells, extra in (("parallel", CELLS, ("-n", "2")), ("reversed", CELLS[::-1], ()),
                               ("alone", [SHIFTED], ())):
        out = tmp_path_factory.mktemp(name)
        runs[name] = (out, *bench(out, cells, baselines, "--strict-baselines", *extra))
    return runs


def test_update_records_exactly_the_cells_that_ran(baselines, recorded):
    data = json.loads(baseline_path(baselines, "regress").read_text(encoding="utf-8"))
    assert data["profile"] == "regress" and sorted(data["cells"]) == sorted(CELLS)
    for cell in CELLS:
        rec = record(recorded, cell)
        entry = data["cells"][cell]["cpu-fp32"]
        assert {k: entry[k] for k in entry if k not in ("device", "precision")} == {k: rec[k] for k in entry
                                                                                     if k in rec}


def summary_robustness(results: Path, cell: str) -> dict:
    """language -> robustness row of `cell` in a summary.json (end of run or `python -m harness report`)."""
    data = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    return {r["language"]: r for r in data["robustness"] if f"{r['model']}-{r['task']}-{r['domain']}" == cell}


def test_robustness_is_analysed_from_the_saved_predictions(recorded, checked_runs):
    shifted, general = record(recorded, SHIFTED), record(recorded, GENERAL)
    rows = summary_robustness(recorded / "results", SHIFTED)
    assert set(rows) == set(shifted["languages"])
    for lang, r in rows.items():
        assert r["source"] == "predictions"
        assert r["mean"] == pytest.approx(shifted["gain"][lang]["mean"] - general["gain"][lang]["mean"])
        assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert summary_robustness(checked_runs["reversed"][0] / "results", SHIFTED) == rows  # legal ran first
    assert "robustness" not in shifted  # a cell never reads another cell's files


def test_intermediate_keys_do_not_depend_on_what_ran_before(recorded, checked_runs):
    """The legal cell alone in a fresh process has the keys it had after two other cells in one process."""
    alone, after = record(checked_runs["alone"][0], SHIFTED), record(recorded, SHIFTED)
    assert alone["intermediate_key"] == after["intermediate_key"]
    assert [m["key"] for m in alone["intermediate"]] == [m["key"] for m in after["intermediate"]]


def test_report_pairs_cells_of_separate_runs(tmp_path, recorded, checked_runs):
    """The legal cell run alone and the general cell of another run, in one folder: `report` analyses them."""
    for run, cell in (("alone", SHIFTED), ("reversed", GENERAL)):
        src = checked_runs[run][0] / "results"
        for sub, suffix in (("cells", "json"), ("predictions", "npz")):
            (tmp_path / sub).mkdir(exist_ok=True)
            (tmp_path / sub / f"{cell}.{suffix}").write_bytes((src / sub / f"{cell}.{suffix}").read_bytes())
    done = run_harness("report", "--results-dir", str(tmp_path), "--format", "json")
    assert done.returncode == 0, done.stderr
    (tmp_path / "summary.json").write_text(done.stdout, encoding="utf-8")
    assert summary_robustness(tmp_path, SHIFTED) == summary_robustness(recorded / "results", SHIFTED)


@pytest.mark.parametrize("run", ["parallel", "reversed", "alone"])
def test_same_numbers_alone_in_parallel_and_in_any_order(recorded, checked_runs, run):
    out, code, output = checked_runs[run]
    assert code == 0, output
    expected = {"parallel": CELLS, "reversed": CELLS[::-1], "alone": [SHIFTED]}[run]
    ran = outcomes(output)
    assert set(ran) == set(expected) and set(ran.values()) == {"PASSED"}, output  # --strict-baselines held
    if run == "reversed":
        assert order(output) == expected
    if run == "parallel":  # each model-task group on one worker, its general cell first
        assert "created: 2/2 workers" in output
        assert summary_robustness(out / "results", SHIFTED) == summary_robustness(recorded / "results", SHIFTED)
    for cell in expected:
        again, first = record(out, cell), record(recorded, cell)
        assert {k: again[k] for k in NUMBERS} == {k: first[k] for k in NUMBERS}, cell
    assert record(out, SHIFTED)["env"]["torch_threads"] == 1


def test_check_fails_the_degraded_cell_and_passes_the_others(tmp_path, baselines, recorded):
    out = tmp_path / "degraded"
    code, output = bench(out, CELLS, baselines, "--degrade-intermediate", "classification", cache=recorded / "cache")
    assert code == 1, output
    assert outcomes(output) == {CLASSIFICATION: "FAILED", GENERAL: "PASSED", SHIFTED: "PASSED"}, output
    was, now = record(recorded, CLASSIFICATION), record(out, CLASSIFICATION)
    drop = was["metrics"]["intermediate"]["en"]["accuracy"] - now["metrics"]["intermediate"]["en"]["accuracy"]
    assert drop > 0.05  # the shuffled labels really hurt the intermediate arm
    table = re.search(rf"{CLASSIFICATION}: differs from \S+regress\.json \(margin 0.02\)\n(.*?)\n(?:-+ Captured|=+ )",
                      output, re.S)
    assert table, output
    rows = table[1].splitlines()
    assert rows[0].split() == ["lang", "what", "baseline", "now", "change", "[interval]", "outcome"]
    assert any(r.split()[:2] in (["en", "gain"], ["en", "intermediate"]) for r in rows[2:]), table[1]
    for cell in (GENERAL, SHIFTED):
        assert {k: record(out, cell)[k] for k in NUMBERS} == {k: record(recorded, cell)[k] for k in NUMBERS}


def test_cell_without_baseline_is_new_and_fails_when_strict(tmp_path, recorded):
    """Reusing the recorded results: nothing trains again."""
    empty = tmp_path / "none"
    code, output = bench(recorded, [SHIFTED], empty)
    assert code == 0, output
    assert f"BaselineWarning: {SHIFTED}: no baseline in {empty / 'regress.json'}" in output
    assert f"new (no baseline in {empty / 'regress.json'}): {SHIFTED}" in output
    code, output = bench(recorded, [SHIFTED], empty, "--strict-baselines")
    assert code == 1 and outcomes(output) == {SHIFTED: "FAILED"}, output
    assert "record one with --update-baselines (--strict-baselines)" in output


def test_corrupt_baseline_file_is_a_clear_error_and_is_kept(tmp_path, recorded):
    path = baseline_path(tmp_path, "regress")
    path.write_text('{"schema": 1, "cells": {"bert', encoding="utf-8")
    for extra in (["--update-baselines"], []):  # found before any cell runs, with or without the flag
        code, output = bench(recorded, [SHIFTED], tmp_path, *extra)
        assert code == 4 and f"ERROR: {path}: not valid JSON (line 1: Unterminated string" in output, output
    assert path.read_text(encoding="utf-8") == '{"schema": 1, "cells": {"bert'

