"""Real cells end to end through `pytest bench` in a subprocess (tiny profile, one seed).

One run covers three cells of one model and task: the general and legal cells train and evaluate (the legal
cell reuses the intermediate model the general cell trained), while the medical cell's test split holds an
unknown label and must fail alone, in one line, without a record. A second run with a fresh cache and --rerun
repeats the general cell from scratch and must reproduce its numbers exactly.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import records, run_pytest

MODEL_TASK = "bert-classification"
GOOD, SHIFTED, BAD = f"{MODEL_TASK}-general", f"{MODEL_TASK}-legal", f"{MODEL_TASK}-medical"
BAD_FILE = "classification-medical/en/test.jsonl"
BAD_ROW = 5
TIMINGS = ("load_s", "intermediate_s", "train_s", "eval_s", "train_examples_per_s", "eval_examples_per_s",
           "total_s")

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _bench(data_dir, out, selection, *extra) -> dict:
    proc = run_pytest("bench", "-p", "no:hypothesispytest", "-k", selection, "--seeds", "1", "--data-dir",
                      str(data_dir), "--results-dir", str(out / "results"), "--cache-dir", str(out / "cache"), *extra)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr, "results": str(out / "results")}


def _once(tmp_path_factory, name: str, make) -> dict:
    """Run `make(folder)` once per test session even under xdist (the workers share the parent of their
    base temp dirs; a lock lets the first do the work and the others read its outcome)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, outcome = shared / f"integration-{name}", shared / f"integration-{name}.json"
    with FileLock(str(outcome) + ".lock"):
        if not outcome.exists():
            folder.mkdir(exist_ok=True)
            outcome.write_text(json.dumps(make(folder)))
    return json.loads(outcome.read_text())


@pytest.fixture(scope="module")
def data_dir(tiny_corpora, tmp_path_factory):
    """A copy of the tiny corpora whose medical classification test split has an unknown label in one row."""

    def make(folder):
        root = folder / "tiny"
        shutil.copytree(tiny_corpora, root)
        path = root / BAD_FILE
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        row = json.loads(lines[BAD_ROW - 1])
        row["label"] = "astrology"
        lines[BAD_ROW - 1] = json.dumps(row) + "\n"
        path.write_text("".join(lines), encoding="utf-8")
        return {"path": str(root)}
    return Path(_once(tmp_path_factory, "data", make)["path"])


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    return _once(tmp_path_factory, "run1", lambda out: _bench(data_dir, out, f"{GOOD} or {SHIFTED} or {BAD}"))


@pytest.fixture(scope="module")
def second_run(data_dir, first_run, tmp_path_factory):
    """The general cell again, over a copy of the first run's results with --rerun and a fresh cache (tokenizer
    and intermediate model trained again): every number must be reproduced, none reused."""

    def make(out):
        shutil.copytree(first_run["results"], out / "results")
        return _bench(data_dir, out, GOOD, "--rerun")
    return _once(tmp_path_factory, "run2", make)


def _record(results, cell_id) -> dict:
    return records(results)[cell_id]


def test_good_cells_pass_and_only_the_bad_one_fails(first_run):
    output, results = first_run["output"], Path(first_run["results"])
    assert first_run["returncode"] == 1, output
    assert re.search(r"\b1 failed, 2 passed\b", output), output
    assert sorted(p.stem for p in (results / "cells").glob("*.json")) == sorted([GOOD, SHIFTED])
    assert not (results / "predictions" / f"{BAD}.npz").exists()


def test_bad_data_fails_in_one_line_naming_file_row_and_field(first_run, data_dir):
    output = first_run["output"]
    lines = [line for line in output.splitlines() if "astrology" in line]
    assert lines, output
    assert str(data_dir / BAD_FILE) in lines[0]
    assert f"row {BAD_ROW} field 'label'" in lines[0] and "unknown label" in lines[0]
    assert not any("Traceback" in line or "DataError" in line for line in output.splitlines()), output


def test_record_fields_are_present_and_sane(first_run):
    record = _record(first_run["results"], GOOD)
    assert record["cell"] == GOOD and record["profile"] == "tiny"
    assert (record["task"], record["domain"], record["seeds"]) == ("classification", "general", [0])
    assert record["main_metric"] == "accuracy"
    assert record["language"] == "en" and set(record["languages"]) >= {"en", "de", "fr"}
    for arm in ("direct", "intermediate"):
        assert set(record["metrics"][arm]) == set(record["languages"])
        for lang, values in record["metrics"][arm].items():
            assert set(values) == {"accuracy", "macro_f1"}
            assert all(0.0 <= v <= 1.0 for v in values.values())
            assert record["metrics_per_seed"][arm][lang]["accuracy"] == [values["accuracy"]]
    for lang, gain in record["gain"].items():
        direct, inter = (record["metrics"][arm][lang]["accuracy"] for arm in ("direct", "intermediate"))
        assert gain["mean"] == pytest.approx(inter - direct)
        assert gain["ci_low"] <= gain["mean"] <= gain["ci_high"]
        assert gain["verdict"] in {"positive", "negative", "equivalent", "inconclusive"}
    assert record["data"]["target"]["train"] > 0 and record["data"]["intermediate"]["train"] >= 10 * 256
    assert record["hyperparameters"]["target"]["lr"] > 0
    assert record["env"]["torch"] and record["env"]["device"] == "cpu"


def test_timings_are_recorded(first_run):
    timings = _record(first_run["results"], GOOD)["timings"]
    assert set(TIMINGS) <= set(timings)
    assert all(math.isfinite(timings[k]) and timings[k] >= 0 for k in TIMINGS)
    assert timings["train_examples_per_s"] > 0 and timings["eval_examples_per_s"] > 0
    phases = sum(timings[k] for k in ("load_s", "intermediate_s", "train_s", "eval_s"))
    assert timings["total_s"] >= 0.99 * phases


def test_intermediate_model_is_trained_once_and_reused_across_domains(first_run):
    general, shifted = (_record(first_run["results"], c) for c in (GOOD, SHIFTED))
    assert general["intermediate_key"] == shifted["intermediate_key"]
    trained = [general["intermediate"][0]["trained_here"], shifted["intermediate"][0]["trained_here"]]
    assert sorted(trained) == [False, True]


def test_predictions_are_saved_per_language(first_run):
    record = _record(first_run["results"], GOOD)
    with np.load(Path(first_run["results"]) / "predictions" / f"{GOOD}.npz") as saved:
        for lang, size in record["data"]["target"]["test"].items():
            assert saved[f"y_true/{lang}"].shape == (size,)
            assert saved[f"direct/{lang}"].shape == saved[f"intermediate/{lang}"].shape == (1, size)


def test_same_seed_same_metrics_on_a_second_run(first_run, second_run):
    before = _record(first_run["results"], GOOD)
    assert second_run["returncode"] == 0, second_run["output"]
    after = _record(second_run["results"], GOOD)
    assert after["intermediate"][0]["trained_here"], "a fresh cache: the intermediate model is trained again"
    assert after["timings"] != before["timings"], "--rerun must train the cell again, not reuse its record"
    for key in ("metrics", "metrics_per_seed", "gain", "intermediate_key", "config_key"):
        assert after[key] == before[key], key
