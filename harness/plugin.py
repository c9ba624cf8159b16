"""The pytest plugin: options, the parametrised grid, cell execution and the end-of-run summary.

Registered through the `pytest11` entry point `transfer_bench`. Any test function that takes a `cell`
argument is parametrised over the profile's grid; the `transfer_bench` fixture runs a cell.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from harness.grid import DOMAINS, MODELS, TASKS, Cell, check_names

log = logging.getLogger("harness")
RECORD_KEY = "transfer_record"

# option -> (ini/dest name, default, help)
_PATH_OPTIONS = {
    "--data-dir": ("data_dir", None, "root folder of the profile's data sets (tiny: generated corpora)"),
    "--spec": ("spec", None, "TOML file of extra data sets / cells (see README: bring your own data)"),
    "--results-dir": ("results_dir", "results", "where cell records (cells/) and the run summary go"),
    "--baselines": ("baselines", "baselines", "folder of recorded baselines, one JSON file per profile"),
    "--cache-dir": ("cache_dir", ".cache/transfer-bench",
                    "intermediate checkpoints, tokenizers, generated corpora and data caches"),
}


def pytest_addoption(parser):
    group = parser.getgroup("transfer-bench", "transfer-bench: intermediate-task transfer grid")
    group.addoption("--profile", default=None, help="profile naming models, data and hyper-parameters "
                    "(tiny [default], minilm, paper); ini: profile")
    parser.addini("profile", "default --profile", default="tiny")
    group.addoption("--seeds", type=int, default=None, help="seeds per arm (default: the profile's); ini: seeds")
    parser.addini("seeds", "default --seeds", default="")
    for flag, (name, default, text) in _PATH_OPTIONS.items():
        group.addoption(flag, dest=name, default=None, help=f"{text} (default: {default}); ini: {name}")
        parser.addini(name, f"default {flag}", default=default or "")
    for kind, valid in (("models", MODELS), ("tasks", TASKS), ("domains", DOMAINS)):
        group.addoption(f"--{kind}", default=None, help=f"comma-separated {kind} to run (default: all of "
                        f"{', '.join(valid)}{' and spec domains' if kind == 'domains' else ''})")
    group.addoption("--update-baselines", action="store_true", help="record the cells that ran as baselines")
    group.addoption("--strict-baselines", action="store_true", help="a cell with no baseline fails")
    group.addoption("--rerun", action="store_true", help="retrain cells even when a finished record exists")


def _setting(config, name: str):
    value = config.getoption(name)
    return value if value not in (None, "") else (config.getini(name) or None)


class Bench:
    """Per-session state: the resolved profile (loaded on first use) and the run context."""

    def __init__(self, config):
        self.config = config
        self.profile_name = _setting(config, "profile") or "tiny"
        seeds = _setting(config, "seeds")
        self.seeds = int(seeds) if seeds else None
        self.paths = {name: _setting(config, name) for name, *_ in _PATH_OPTIONS.values()}
        self.filters = {}
        from harness.profiles import PROFILES
        try:
            check_names("profile", [self.profile_name], PROFILES)
            if self.seeds is not None and self.seeds < 1:
                raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
            for kind, valid in (("models", MODELS), ("tasks", TASKS), ("domains", None)):
                raw = config.getoption(kind)
                if raw:
                    self.filters[kind] = [x.strip() for x in raw.split(",") if x.strip()]
                    if valid:
                        check_names(kind[:-1], self.filters[kind], valid)
        except ValueError as err:
            raise pytest.UsageError(str(err)) from None
        self._profile = None
        self._ctx = None

    @property
    def profile(self):
        if self._profile is None:
            from harness.profiles import load_profile
            try:
                self._profile = load_profile(self.profile_name, self.paths["data_dir"], Path(self.paths["cache_dir"]),
                                             spec=self.paths["spec"])
            except ValueError as err:
                raise pytest.UsageError(str(err)) from None
            if "domains" in self.filters:
                try:
                    check_names("domain", self.filters["domains"], self._profile.domains)
                except ValueError as err:
                    raise pytest.UsageError(str(err)) from None
        return self._profile

    def cells(self) -> list[Cell]:
        return [c for c in self.profile.cells()
                if all(getattr(c, kind[:-1]) in names for kind, names in self.filters.items())]

    @property
    def context(self):
        if self._ctx is None:
            import torch

            from harness.runner import RunContext
            p = self.profile
            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
            torch.set_num_threads(p.threads or max(1, (os.cpu_count() or 1) // workers))
            device = os.environ.get("TRANSFER_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
            seeds = list(range(self.seeds or p.seeds))
            self._ctx = RunContext(profile=p, results_dir=Path(self.paths["results_dir"]),
                                   cache_dir=Path(self.paths["cache_dir"]), seeds=seeds, device=device,
                                   rerun=self.config.getoption("rerun"))
        return self._ctx


def pytest_configure(config):
    config.stash[_BENCH] = Bench(config)
    for name in MODELS + TASKS + DOMAINS:
        config.addinivalue_line("markers", f"{name}: transfer-bench cells of {name}")
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


_BENCH = pytest.StashKey[Bench]()


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    bench = metafunc.config.stash[_BENCH]
    params = []
    for cell in bench.cells():
        marks = [getattr(pytest.mark, cell.model), getattr(pytest.mark, cell.task),
                 getattr(pytest.mark, cell.domain), pytest.mark.xdist_group(cell.group)]
        reason = bench.profile.models[cell.model].skip_reason
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(cell, id=cell.id, marks=marks))
    metafunc.parametrize("cell", params)


class CellRunner:
    def __init__(self, bench: Bench, node):
        self.bench, self.node = bench, node

    def run(self, cell: Cell) -> dict:
        """Run a cell (or reuse its finished record) and return the record; bad input fails in one line."""
        from harness.data import DataError
        from harness.results import RecordError, record_path
        from harness.runner import run_cell

        ctx = self.bench.context
        try:
            record = run_cell(ctx, cell)
        except (DataError, RecordError) as err:
            pytest.fail(str(err), pytrace=False)
        self.node.user_properties.append((RECORD_KEY, str(record_path(ctx.results_dir, cell.id))))
        if "PYTEST_XDIST_WORKER" in os.environ or not self.bench.config.getoption("verbose") < 0:
            log.info("%s done in %.1fs", cell.id, record["timings"]["total_s"])
        return record


@pytest.fixture
def transfer_bench(request) -> CellRunner:
    """Runs a cell through the harness: `transfer_bench.run(cell)` returns the cell record."""
    return CellRunner(request.config.stash[_BENCH], request.node)


_finished: list[str] = []


def pytest_runtest_logreport(report):
    for key, value in report.user_properties:
        if key == RECORD_KEY and report.when == "call" and value not in _finished:
            _finished.append(value)


def pytest_terminal_summary(terminalreporter, config):
    if not _finished or hasattr(config, "workerinput"):
        return
    from harness.report import terminal_table
    from harness.results import RecordError, read_record

    records = []
    for path in _finished:
        try:
            records.append(read_record(Path(path)))
        except RecordError as err:
            terminalreporter.write_line(f"transfer-bench: {err}")
    terminalreporter.section("transfer-bench summary")
    terminalreporter.write_line(terminal_table(records))
