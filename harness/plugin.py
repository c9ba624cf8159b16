"""The pytest plugin: options, the parametrised grid, cell execution and the end-of-run summary.

Registered through the `pytest11` entry point `transfer_bench`. Any test function that takes a `cell`
argument is parametrised over the profile's grid; the `transfer_bench` fixture runs a cell.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import pytest

from harness.grid import DOMAINS, MODELS, TASKS, Cell, check_names

log = logging.getLogger("harness")
RECORD_KEY = "transfer_record"
BASELINE_KEY = "transfer_baseline"

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
    group.addoption("--compile", action="store_true", help="train through torch.compile (pays off on GPUs and "
                    "long runs; compiling costs tens of seconds per model shape)")
    group.addoption("--tune", action="store_true", dest="tune", default=None, help="select each arm's learning "
                    "rate and epochs on validation data (default in the minilm and paper profiles; see README)")
    group.addoption("--no-tune", action="store_false", dest="tune", help="train each arm once with the profile's "
                    "recipe (default in tiny)")
    group.addoption("--shard", default=None, metavar="I/N", help="run only shard I of N (1-based): a deterministic "
                    "share of the selected cells, model-task groups kept together (one Slurm array task each; "
                    "combine with `python -m harness merge`)")


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
        self.shard = None
        from harness.profiles import PROFILES
        from harness.shard import parse_shard
        try:
            check_names("profile", [self.profile_name], PROFILES)
            if config.getoption("shard"):
                self.shard = parse_shard(config.getoption("shard"))
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
        from harness.baselines import BaselineError, baseline_path
        self.baseline_file = baseline_path(self.paths["baselines"], self.profile_name)
        self._baselines = None
        if config.getoption("update_baselines") or config.getoption("strict_baselines"):
            try:
                self.baselines()  # an unusable baseline file stops the run before any cell trains
            except BaselineError as err:
                raise pytest.UsageError(str(err)) from None

    def baselines(self) -> dict:
        """The profile's baseline entries by cell id, read once per process; BaselineError when unusable."""
        if self._baselines is None:
            from harness.baselines import load
            self._baselines = load(self.baseline_file, self.profile_name)
        return self._baselines

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
        from harness.shard import shard_cells

        selected = [c for c in self.profile.cells()
                    if all(getattr(c, kind[:-1]) in names for kind, names in self.filters.items())]
        return shard_cells(selected, *self.shard) if self.shard else selected

    @property
    def context(self):
        if self._ctx is None:
            import torch

            from harness.devices import default_device, threads_per_worker, usable_cores
            from harness.runner import RunContext
            p = self.profile
            tune = self.config.getoption("tune")  # --tune / --no-tune; None: the profile's default
            torch.set_num_threads(threads_per_worker(p.threads, usable_cores()))
            device = default_device()
            seeds = list(range(self.seeds or p.seeds))
            self._ctx = RunContext(profile=p, results_dir=Path(self.paths["results_dir"]),
                                   cache_dir=Path(self.paths["cache_dir"]), seeds=seeds, device=device,
                                   rerun=self.config.getoption("rerun"), compile=self.config.getoption("compile"),
                                   tune=p.tune if tune is None else tune)
        return self._ctx


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config):
    """Under `-n K` without a `--dist` choice, schedule with `loadgroup`: the cells of a model-task group (one
    intermediate model) go to one worker, so workers rarely wait for each other's intermediate training."""
    if getattr(config.option, "numprocesses", None) and config.option.dist == "no" \
            and not getattr(config.option, "distload", False):
        config.option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`loadgroup` that groups cells by their id, not only through the `@group` suffix that xdist's workers add
    to node ids: with pytest 9 that suffix is lost (pytest-xdist issue #1386) and groups would be split."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class CellGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            cell = _cell_of(nodeid)
            return f"cells:{cell.group}" if cell else super()._split_scope(nodeid)

    return CellGroupScheduling(config, log)


def _cell_of(nodeid: str) -> Cell | None:
    """The cell of a grid node id `...[MODEL-TASK-DOMAIN]` (optionally followed by `@group`), else None."""
    match = re.search(r"\[([^\[\]]+)\](@[^\]]*)?$", nodeid)
    if not match:
        return None
    parts = match.group(1).split("-", 2)
    return Cell(*parts) if len(parts) == 3 and parts[0] in MODELS and parts[1] in TASKS else None


def pytest_configure(config):
    config.stash[_BENCH] = Bench(config)
    for name in MODELS + TASKS + DOMAINS:
        config.addinivalue_line("markers", f"{name}: transfer-bench cells of {name}")
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


_BENCH = pytest.StashKey[Bench]()
_PROFILE_ERROR = pytest.StashKey[pytest.UsageError]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """A profile or --spec that failed to load during collection: one clean `ERROR: ...` line, exit code 4."""
    if _PROFILE_ERROR in session.config.stash:
        raise session.config.stash[_PROFILE_ERROR]


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    bench = metafunc.config.stash[_BENCH]
    try:
        cells = bench.cells()
    except pytest.UsageError as err:  # raised here it would show as a collection error with a traceback
        metafunc.config.stash[_PROFILE_ERROR] = err
        return
    params = []
    for cell in cells:
        marks = [getattr(pytest.mark, cell.model), getattr(pytest.mark, cell.task),
                 getattr(pytest.mark, cell.domain), pytest.mark.xdist_group(cell.group)]
        reason = bench.profile.skip_reason(cell)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(cell, id=cell.id, marks=marks))
    metafunc.parametrize("cell", params)


class _CellKeywords:
    """`-k` for a cell: a word matches a model/task/domain by prefix (`-k bert` is not `roberta`, `-k sim`
    is similarity); a term with a dash matches the id from a word boundary; other names (module, folder,
    function) match by substring as in pytest."""

    def __init__(self, cell: Cell, item):
        from _pytest.mark import KeywordMatcher

        own = {item.name, *MODELS, *TASKS, *DOMAINS}
        self.cell, self.item = cell, item
        self.words = (cell.model, cell.task, cell.domain)
        self.others = [n.lower() for n in KeywordMatcher.from_item(item)._names if n not in own]
        self.others.append(item.originalname.lower())

    def __call__(self, term: str, /, **kwargs) -> bool:
        term = term.lower()
        if "[" in term:
            return term in self.item.name.lower()
        if "-" in term:
            return re.search(r"(^|-)" + re.escape(term), self.cell.id) is not None
        return any(w.startswith(term) for w in self.words) or any(term in n for n in self.others)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Apply `-k` here with whole-word semantics for cells (pytest's own substring match would let
    `-k bert` select the roberta cells too), then clear it so pytest does not filter again."""
    text = (config.option.keyword or "").strip()
    cells = {id(i): i.callspec.params["cell"] for i in items
             if hasattr(i, "callspec") and isinstance(i.callspec.params.get("cell"), Cell)}
    if not text or not cells:
        return
    from _pytest.mark import KeywordMatcher
    from _pytest.mark.expression import Expression

    try:
        expr = Expression.compile(text)
    except SyntaxError as err:
        raise pytest.UsageError(f"Wrong expression passed to '-k': {text}: {err}") from None
    keep, drop = [], []
    for item in items:
        matcher = _CellKeywords(cells[id(item)], item) if id(item) in cells else KeywordMatcher.from_item(item)
        (keep if expr.evaluate(matcher) else drop).append(item)
    config.option.keyword = ""
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class CellRunner:
    def __init__(self, bench: Bench, node):
        self.bench, self.node = bench, node

    def run(self, cell: Cell) -> dict:
        """Run a cell (or reuse its finished record) and return the record; bad input fails in one line."""
        from harness.data import DataError
        from harness.models import ModelError
        from harness.results import RecordError, record_path
        from harness.runner import run_cell

        ctx = self.bench.context
        try:
            record = run_cell(ctx, cell)
        except (DataError, ModelError, RecordError) as err:
            pytest.fail(str(err), pytrace=False)
        self.node.user_properties.append((RECORD_KEY, str(record_path(ctx.results_dir, cell.id))))
        if "PYTEST_XDIST_WORKER" in os.environ or not self.bench.config.getoption("verbose") < 0:
            log.info("%s done in %.1fs", cell.id, record["timings"]["total_s"])
        return record

    def check(self, record: dict) -> None:
        """Compare a record with the profile's baseline (harness.baselines); with --update-baselines the record
        becomes the baseline instead. A regression fails with a table of what changed; a cell without a
        comparable baseline is a warning and a summary line, or a failure with --strict-baselines."""
        from harness.baselines import BaselineError, check

        config = self.bench.config
        if config.getoption("update_baselines"):
            return
        try:
            status, message = check(record, self.bench.baselines(), self.bench.baseline_file)
        except BaselineError as err:
            status, message = "unusable", str(err)
        if status == "unusable":
            pytest.fail(message, pytrace=False)
        self.node.user_properties.append((BASELINE_KEY, (record["cell"], status)))
        if status == "changed" or (status != "ok" and config.getoption("strict_baselines")):
            pytest.fail(message + (" (--strict-baselines)" if status != "changed" else ""), pytrace=False)
        if status != "ok":
            warnings.warn(BaselineWarning(message), stacklevel=2)


class BaselineWarning(UserWarning):
    """A cell with no comparable baseline: reported as new, not checked."""


@pytest.fixture
def transfer_bench(request) -> CellRunner:
    """Runs a cell through the harness: `transfer_bench.run(cell)` returns the cell record and
    `transfer_bench.check(record)` compares it with the baseline."""
    return CellRunner(request.config.stash[_BENCH], request.node)


_finished: list[str] = []
_passed: list[str] = []  # records of cells whose test passed: what --update-baselines records
_unchecked: dict[str, list[str]] = {}  # baseline status (new, mismatch) -> cell ids, for the summary


def pytest_runtest_logreport(report):
    for key, value in report.user_properties:
        if key == RECORD_KEY and report.when == "call" and value not in _finished:
            _finished.append(value)
        if key == RECORD_KEY and report.when == "call" and report.passed and value not in _passed:
            _passed.append(value)
        if key == BASELINE_KEY and report.when == "call" and value[1] in ("new", "mismatch"):
            _unchecked.setdefault(value[1], []).append(value[0])


_SUMMARY = pytest.StashKey[dict]()


def pytest_sessionfinish(session):
    """On the controller (or a run without xdist): the run's summary files from the records of this run."""
    config = session.config
    if config.getoption("update_baselines") and _passed and not hasattr(config, "workerinput"):
        _update_baselines(session)
    if not _finished or hasattr(config, "workerinput"):
        return
    from harness.report import usable, write_summary
    from harness.results import RecordError, read_record

    results_dir = Path(config.stash[_BENCH].paths["results_dir"])
    records, errors = [], []
    for path in _finished:
        try:
            records.append(read_record(Path(path)))
        except RecordError as err:
            errors.append(str(err))
    records, more = usable(records, results_dir)
    errors += more
    written = []
    if records:
        try:
            written = write_summary(results_dir, records, errors, expected=[Path(p).stem for p in _finished])
        except OSError as err:
            errors.append(f"{results_dir}: summary not written ({err})")
    config.stash[_SUMMARY] = {"records": records, "errors": errors, "written": written}


def _update_baselines(session) -> None:
    """Write the records of the cells that passed into the baseline file, once, at the end of the run."""
    from harness.baselines import BaselineError, update
    from harness.results import RecordError, read_record

    bench = session.config.stash[_BENCH]
    try:
        update(bench.baseline_file, bench.profile_name, [read_record(Path(p)) for p in _passed])
        line = f"recorded {len(_passed)} cell(s) in {bench.baseline_file}"
    except (BaselineError, RecordError, OSError) as err:
        line = f"baselines not written: {err}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    session.config.stash[_BASELINE_LINES] = [line]


def _baseline_summary(terminalreporter, config) -> None:
    lines = list(config.stash.get(_BASELINE_LINES, []))
    file = config.stash[_BENCH].baseline_file
    if _unchecked.get("new"):
        lines.append(f"new (no baseline in {file}): {', '.join(sorted(_unchecked['new']))}")
    if _unchecked.get("mismatch"):
        lines.append(f"not compared (baseline of other seeds): {', '.join(sorted(_unchecked['mismatch']))}")
    if lines:
        terminalreporter.section("transfer-bench baselines")
        for line in lines:
            terminalreporter.write_line(line)


_BASELINE_LINES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config):
    _baseline_summary(terminalreporter, config)
    summary = config.stash.get(_SUMMARY, None)
    if summary is None:
        return
    from harness.report import terminal_table

    terminalreporter.section("transfer-bench summary")
    for err in summary["errors"]:
        terminalreporter.write_line(f"transfer-bench: {err}")
    if summary["records"]:
        terminalreporter.write_line(terminal_table(summary["records"]))
    if summary["written"]:
        terminalreporter.write_line(f"written: {', '.join(str(p) for p in summary['written'])}")
