"""The pytest plugin (entry point `transfer_bench`): hooks only. Any test function that takes a `cell` argument
is parametrised over the profile's grid; the `transfer_bench` fixture runs a cell. Options and run state live in
harness/pytest/session.py, `-k` for cells, shards and xdist scheduling in harness/pytest/selection.py.

pytest loads this plugin before the root conftest.py pins each xdist worker to its GPU, and torch must not
load (and initialise CUDA) before that: this module and session.py import whatever may load torch (the cell,
devices, profiles, report, ...) inside the functions that need it.
"""
from __future__ import annotations

import subprocess

import pytest

from harness.definitions.grid import DOMAINS, MODELS, TASKS, Cell
from harness.pytest.options import add_options, deprecated_flags
from harness.pytest.selection import CellGroupScheduling, cell_of, exit_description, select_by_keyword
from harness.pytest.session import CellRunner, Session

_SESSION = pytest.StashKey[Session]()
_PROFILE_ERROR = pytest.StashKey[pytest.UsageError]()


def pytest_addoption(parser):
    add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config):
    """Under `-n K` without a `--dist` choice, schedule with `loadgroup` (harness.pytest.selection's version): the
    first cell of every model-task group (the one that trains its intermediate models) before any group's other
    cells, each cell its own work unit, so the workers stay evenly busy and rarely wait for each other's
    intermediate training."""
    if getattr(config.option, "numprocesses", None) and config.option.dist == "no" \
            and not getattr(config.option, "distload", False):
        config.option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return CellGroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


def pytest_configure(config):
    for line in deprecated_flags(config.invocation_params.args):
        config.issue_config_time_warning(pytest.PytestDeprecationWarning(line), stacklevel=2)
    config.stash[_SESSION] = Session(config)
    config.pluginmanager.register(config.stash[_SESSION], "transfer_bench_session")  # its report hook
    for name in MODELS + TASKS + DOMAINS:
        config.addinivalue_line("markers", f"{name}: transfer-bench cells of {name}")
    config.addinivalue_line("markers", "xdist_group(name): cells that share an intermediate model (pytest-xdist "
                            "loadgroup); registered here too so runs without xdist do not warn")


def pytest_unconfigure(config):
    if _SESSION in config.stash:
        config.stash[_SESSION].restore_environment()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Under xdist the controller collects nothing: it loads a --spec or non-default profile itself, before the
    workers start, so that a problem in it is one `ERROR:` line (exit code 4) rather than every worker's error."""
    config = session.config
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        config.stash[_SESSION].check_profile()


def pytest_generate_tests(metafunc):
    if "cell" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[_SESSION]
    try:
        params = [pytest.param(cell, id=cell.id, marks=session.marks(cell)) for cell in session.cells()]
    except pytest.UsageError as err:  # raised here it would show as a collection error with a traceback
        metafunc.config.stash[_PROFILE_ERROR] = err
        return
    metafunc.parametrize("cell", params)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Apply `-k` here with whole-word semantics for cells (pytest's own substring match would let
    `-k bert` select the roberta cells too), then clear it so pytest does not filter again."""
    text = (config.option.keyword or "").strip()
    cells = {id(i): i.callspec.params["cell"] for i in items
             if hasattr(i, "callspec") and isinstance(i.callspec.params.get("cell"), Cell)}
    if not text or not cells:
        return
    try:
        keep, drop = select_by_keyword(text, items, cells)
    except SyntaxError as err:
        raise pytest.UsageError(f"Wrong expression passed to '-k': {text}: {err}") from None
    config.option.keyword = ""
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """A profile or --spec that failed to load during collection: one clean `ERROR: ...` line, exit code 4."""
    if _PROFILE_ERROR in session.config.stash:
        raise session.config.stash[_PROFILE_ERROR]
    run = session.config.stash[_SESSION]
    cells = [item.callspec.params["cell"] for item in session.items
             if hasattr(item, "callspec") and isinstance(item.callspec.params.get("cell"), Cell)]
    run.collected.update(c.id for c in cells)
    if session.config.getoption("plan"):
        run.make_plan(cells)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """--plan: train nothing (the plan is printed in the terminal summary)."""
    return True if session.config.getoption("plan") else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the controller under xdist: the cells a worker collected (every worker collects the same)."""
    node.config.stash[_SESSION].collected.update(c.id for c in map(cell_of, ids) if c)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the controller: how a worker's process ended, for the message of the cell it crashed in."""
    if error is None:
        return
    popen = getattr(getattr(node.gateway, "_io", None), "popen", None)  # execnet's worker process
    try:
        code = popen.wait(timeout=10) if popen else None
    except subprocess.TimeoutExpired:
        code = None
    node.config.stash[_SESSION].worker_exits[node.gateway.id] = exit_description(code)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
    report.longrepr = sched.config.stash[_SESSION].crash_message(report.node.gateway.id, crashitem)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput") or session.config.option.collectonly \
            or session.config.getoption("plan"):
        return
    run = session.config.stash[_SESSION]
    run.finish()
    if run.baseline_update_failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    for title, lines in config.stash[_SESSION].terminal_lines():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def transfer_bench(request) -> CellRunner:
    """Runs a cell through the harness: `transfer_bench.run(cell)` returns the cell record and
    `transfer_bench.check(record)` compares it with the baseline."""
    return CellRunner(request.config.stash[_SESSION], request.node)
