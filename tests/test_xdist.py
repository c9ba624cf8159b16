"""The grid under pytest-xdist: shared intermediate models trained once, the same numbers as without xdist,
and one summary on the controller. Real `pytest bench` runs of the micro profile in subprocesses."""
from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import grid_run, records

# Three cells in collection order cls-general, cls-medical, sent-general: under `--dist load` with two workers
# they are dealt round-robin, so both workers start with a classification cell and need the same intermediate
# model at the same time (the lock decides who trains it).
CELLS = ("--models", "bert", "--tasks", "classification,sentiment", "--domains", "general,medical",
         "-k", "not sentiment-medical")

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run(tmp: Path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the cells with results and cache under `tmp`; return the completed process and records by cell."""
    run = grid_run(tmp, *CELLS, *args)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run, records(tmp / "results")


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("serial"), "-n", "0")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The same cells with two workers and a fresh cache: tokenizers, intermediate models and all trained again
    (tokenizer training is deterministic across processes: tests/test_models.py checks it)."""
    return _run(tmp_path_factory.mktemp("xdist"), "-n", "2", "--dist", "load")


def test_all_cells_ran_in_both_modes(serial, two_workers):
    expected = {"bert-classification-general", "bert-classification-medical", "bert-sentiment-general"}
    assert set(serial[1]) == set(two_workers[1]) == expected


def test_intermediate_models_trained_once_per_key_across_workers(two_workers):
    by_cell = two_workers[1]
    trained = defaultdict(int)
    for record in by_cell.values():
        for entry in record["intermediate"]:
            trained[entry["key"]] += entry["trained_here"]
    assert len(trained) == 2 and set(trained.values()) == {1}, trained
    # the two classification cells shared one key and ran on different workers at the same time
    general, medical = by_cell["bert-classification-general"], by_cell["bert-classification-medical"]
    assert general["intermediate_key"] == medical["intermediate_key"]
    assert general["env"]["xdist_worker"] != medical["env"]["xdist_worker"]
    assert {r["env"]["xdist_worker"] for r in by_cell.values()} == {"gw0", "gw1"}


def test_metrics_identical_with_and_without_xdist(serial, two_workers):
    for cell, record in serial[1].items():
        other = two_workers[1][cell]
        assert other["metrics_per_seed"] == record["metrics_per_seed"], cell
        assert other["gain"] == record["gain"], cell
        assert other["config_key"] == record["config_key"]


def test_records_say_where_they_ran(serial, two_workers):
    for record in serial[1].values():
        env = record["env"]
        assert env["device"] == "cpu" and env["precision"] == "fp32" and env["device_name"]
        assert env["xdist_worker"] is None and env["torch_threads"] == 1  # the profile fixes one thread
    assert {r["env"]["torch_threads"] for r in two_workers[1].values()} == {1}


def test_one_summary_with_every_cell(serial, two_workers):
    """The controller gathers every worker's cells into one terminal summary and one set of summary files."""
    for run, by_cell in (serial, two_workers):
        assert run.stdout.count("transfer-bench summary") == 1
        results = Path(run.args[run.args.index("--results-dir") + 1])
        summary = json.loads((results / "summary.json").read_text())
        assert sorted(c["cell"] for c in summary["cells"]) == sorted(by_cell)
        assert "summary.json" in run.stdout.split("transfer-bench summary", 1)[1]


@pytest.fixture(scope="module")
def ensemble_runs(tmp_path_factory):
    """The cells with --train-together (harness.training.together) and two seeds, without xdist and with two workers."""
    return [_run(tmp_path_factory.mktemp(name), "--train-together", "--seeds", "2", *args)[1]
            for name, args in (("ensemble-serial", ("-n", "0")), ("ensemble-xdist", ("-n", "2", "--dist", "load")))]


def test_ensemble_trains_each_group_of_intermediate_models_once(ensemble_runs):
    """The two seeds' intermediate models of a (model, task) train together once, in one of the cells that need
    them, whichever worker gets there first; every other cell reads both from the cache."""
    for by_cell in ensemble_runs:
        trained = defaultdict(list)
        for record in by_cell.values():
            for entry in record["intermediate"]:
                assert entry["group"] == [0, 1]
                trained[entry["key"]].append((record["cell"], entry["seed"], entry["trained_here"],
                                              entry["seconds"]))
        assert len(trained) == 4  # classification and sentiment x seeds 0 and 1: a key per seed
        for uses in trained.values():
            assert sum(here for _, _, here, _ in uses) == (1 if uses[0][1] == 0 else 0), uses
        first = {cell: s for uses in trained.values() for cell, seed, here, s in uses if here}
        assert len(first) == 2 and all(s > 0 for s in first.values())  # seed 0's entry holds the group's seconds


def test_ensemble_metrics_identical_with_and_without_xdist(ensemble_runs):
    alone, workers = ensemble_runs
    assert set(alone) == set(workers) and alone
    for cell, record in alone.items():
        assert workers[cell]["metrics_per_seed"] == record["metrics_per_seed"], cell
        assert workers[cell]["config_key"] == record["config_key"]
