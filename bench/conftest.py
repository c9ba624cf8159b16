"""bench/ conftest: keeps the speed benchmarks out of the grid run, and prints their table at the end.

`pytest bench` runs the grid only: test_speed.py is collected under --benchmark-only or when it is named on the
command line (`pytest bench/test_speed.py`, `pytest bench/test_speed.py::test_training_speed`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

SPEED_FILE = "test_speed.py"
_ROWS = pytest.StashKey[list]()


def _named(path: Path, config) -> bool:
    root = config.invocation_params.dir
    return any((root / arg.split("::")[0]).resolve() == path.resolve() for arg in config.args)


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name != SPEED_FILE:
        return None
    if config.getoption("benchmark_only", default=False) or _named(collection_path, config):
        return None
    return True


@pytest.fixture(scope="session")
def speed_table(request) -> list:
    """Rows (dicts) of the speed benchmarks, printed as one table in the terminal summary."""
    return request.config.stash.setdefault(_ROWS, [])


def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(_ROWS, [])
    if rows:
        from tabulate import tabulate

        terminalreporter.section("harness loop vs Hugging Face Trainer (same model, data, hyper-parameters)")
        terminalreporter.write_line(tabulate(rows, headers="keys", floatfmt=".3g"))
