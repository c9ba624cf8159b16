"""Device and thread assignment per xdist worker (harness/training/devices.py and the root conftest.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, run_pytest

from harness.running.environment import device_info
from harness.training.devices import (
    assign_device,
    pin_worker_device,
    precision,
    threads_per_worker,
    usable_cores,
    visible_gpus,
    worker_index,
)


@pytest.mark.parametrize("worker, expected", [("gw0", "3"), ("gw1", "5"), ("gw2", "3"), ("gw5", "5")])
def test_worker_gets_gpu_i_mod_g_of_the_users_list(worker, expected):
    env = {"PYTEST_XDIST_WORKER": worker, "CUDA_VISIBLE_DEVICES": "3, 5"}
    assert assign_device(env) == expected
    pin_worker_device(env)
    assert env["CUDA_VISIBLE_DEVICES"] == expected
    pin_worker_device(env)  # a second call (plugin reloaded) keeps the same GPU
    assert env["CUDA_VISIBLE_DEVICES"] == expected


@pytest.mark.parametrize("env", [
    {"CUDA_VISIBLE_DEVICES": "0,1"},  # not an xdist worker: the first GPU, nothing pinned
    {"PYTEST_XDIST_WORKER": "gw1", "CUDA_VISIBLE_DEVICES": ""},  # user hid every GPU
    {"PYTEST_XDIST_WORKER": "gw1", "CUDA_VISIBLE_DEVICES": "-1"},
    {"PYTEST_XDIST_WORKER": "master", "CUDA_VISIBLE_DEVICES": "0,1"},
])
def test_environment_left_alone_outside_workers_or_without_gpus(env):
    before = dict(env)
    pin_worker_device(env)
    assert env == before


def _fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {code}\n")
    script.chmod(0o755)


def test_gpus_listed_by_nvidia_smi_when_the_user_set_none(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "0\\n1\\n2\\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus({}) == ["0", "1", "2"]
    assert assign_device({"PYTEST_XDIST_WORKER": "gw4"}) == "1"


def test_no_gpus_when_nvidia_smi_is_missing_or_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus({}) == []
    _fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed\\n", code=9)
    assert visible_gpus({}) == []


def test_worker_index():
    assert worker_index({"PYTEST_XDIST_WORKER": "gw12"}) == 12
    assert worker_index({}) is None


@pytest.mark.parametrize("fixed, cores, workers, expected", [
    (1, 16, "4", 1),      # the profile fixes threads (tiny: 1, for determinism)
    (None, 16, "4", 4),   # cores split among workers
    (None, 2, "2", 1),
    (None, 2, "3", 1),    # never below one
    (None, 8, None, 8),   # no xdist: every core
])
def test_threads_per_worker(fixed, cores, workers, expected):
    env = {"PYTEST_XDIST_WORKER_COUNT": workers} if workers else {}
    assert threads_per_worker(fixed, cores, env) == expected


def test_cpu_device_info():
    info = device_info("cpu")
    assert precision("cpu") == "fp32"
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["device_name"]


_PROBE = '''
import json, os, pytest
from harness.training.devices import threads_per_worker, usable_cores

@pytest.mark.parametrize("cell_id", [f"{g}-{d}" for d in ("general", "medical", "legal", "other")
                                  for g in ("bert-similarity", "xlnet-sentiment")])  # groups interleaved
def test_probe(cell_id):
    out = {"group": cell_id.rsplit("-", 1)[0], "worker": os.environ.get("PYTEST_XDIST_WORKER"),
           "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": threads_per_worker(None, usable_cores())}
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write(json.dumps(out) + "\\n")
'''


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_workers_get_their_gpu_threads_and_grouped_cells(tmp_path):
    """A real `pytest -n 2` under the project's root conftest.py with a fake list of two GPUs: each worker
    pins one of them, splits the cores, and (no --dist given) each starts with the first cell of its own
    model-task group (harness.pytest.selection.CellGroupScheduling)."""
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(_PROBE)
    out = tmp_path / "probe.jsonl"
    run = run_pytest("-q", "-n", "2", "-p", "no:cacheprovider", str(tmp_path), cwd=tmp_path, timeout=300,
                     env={"CUDA_VISIBLE_DEVICES": "3,5", "PROBE_OUT": str(out)})
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    assert {r["worker"]: r["gpu"] for r in rows} == {"gw0": "3", "gw1": "5"}
    assert {r["threads"] for r in rows} == {max(1, usable_cores() // 2)}
    first = {}
    for r in rows:
        first.setdefault(r["worker"], r["group"])
    assert sorted(first.values()) == ["bert-similarity", "xlnet-sentiment"], rows


@pytest.mark.parametrize("nodeid, group", [
    ("bench/test_transfer.py::test_transfer[bert-classification-general]", "bert-classification"),
    ("bench/test_transfer.py::test_transfer[xlnet-similarity-my-contracts]@xlnet-similarity", "xlnet-similarity"),
    ("tests/test_x.py::test_y[1-2-3]", None),  # not a cell: scheduled on its own
    ("tests/test_x.py::test_y", None),
])
def test_loadgroup_scheduling_groups_cells_by_model_and_task(nodeid, group):
    from harness.pytest.selection import cell_of

    cell = cell_of(nodeid)
    assert (cell.group if cell else None) == group


def test_other_tests_are_scheduled_with_their_file(tmp_path):
    """Under -n 2, the tests of one module that share a module-scoped fixture run on one worker, so the fixture
    is built once (pytest 9 drops xdist's `@group` suffix, and each test was scheduled on its own before)."""
    from harness.pytest.selection import CellGroupScheduling

    split = CellGroupScheduling._split_scope.__get__(object.__new__(CellGroupScheduling))
    assert split("tests/test_a.py::test_one[1]") == split("tests/test_a.py::test_two") == "tests/test_a.py"
    assert split("tests/test_b.py::test_one") == "tests/test_b.py"
    assert split("tests/test_a.py::test_one@slow-group") == "slow-group"
    assert split("bench/test_transfer.py::test_transfer[bert-classification-general]") \
        == "cells:bert-classification:bert-classification-general"
    log = tmp_path / "built"
    (tmp_path / "test_shared.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(scope='module')\n"
        "def built():\n"
        f"    open({str(log)!r}, 'a').write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_uses_it(built, i):\n"
        "    pass\n"
        "def test_other_file_mate():\n"
        "    pass\n", encoding="utf-8")
    (tmp_path / "test_elsewhere.py").write_text("def test_elsewhere():\n    pass\n", encoding="utf-8")
    done = run_pytest("-n", "2", "-p", "no:cacheprovider", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0 and "8 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(log.read_text().split()) == 1, log.read_text()
