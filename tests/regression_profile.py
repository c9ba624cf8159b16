"""A pytest plugin for tests/test_regression.py: the `regress` profile, a real regression on demand.

`regress` is the tiny profile (the micro profile's models are too small for the intermediate arm to help,
so there would be nothing to lose). With `--degrade-intermediate TASK[,TASK]` the
intermediate data set of those tasks carries shuffled labels, so the intermediate arm of their cells learns
nothing useful while every other cell trains exactly as before. Load with `-p regression_profile` and tests/
on PYTHONPATH.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from harness.definitions import profiles
from harness.fileio import atomic_write_text

_degraded: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--degrade-intermediate", default="", help="regress profile: tasks whose intermediate "
                     "training set gets shuffled labels (comma-separated)")


def pytest_configure(config):
    _degraded[:] = [t for t in config.getoption("degrade_intermediate").split(",") if t]


def _shuffled(spec: profiles.DatasetConfig, root: Path, cache_dir: Path) -> profiles.DatasetConfig:
    """A copy of the data set's train split whose labels are permuted (fixed seed) among its rows."""
    rows = [json.loads(line) for line in (root / spec.path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = [r[spec.label] for r in rows]
    for row, i in zip(rows, np.random.default_rng(0).permutation(len(rows))):
        row[spec.label] = labels[i]
    folder = cache_dir / "shuffled" / spec.name
    atomic_write_text(folder / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return spec.replace(name=f"{spec.name}-shuffled", path=str(folder))


def regress(data_dir, cache_dir) -> profiles.Profile:
    p = profiles.tiny(data_dir, cache_dir)
    inter = {t: _shuffled(s, Path(p.data_root), Path(cache_dir)) if t in _degraded else s
             for t, s in p.intermediates.items()}
    return dataclasses.replace(p, name="regress", intermediates=inter)


profiles.PROFILES["regress"] = regress
