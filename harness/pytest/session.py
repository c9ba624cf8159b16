"""Run state of one pytest process: the settings its options (harness/pytest/options.py) resolve to,
the profile and run context, what the run's cells did, and the end-of-run summary and baseline update.
(Imports that may load torch are deferred: plugin.py says why.)"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import pytest

from harness.definitions.grid import TASKS, Cell, check_names
from harness.pytest.options import OPTIONS, parse_auto, parse_seeds, setting

log = logging.getLogger("harness")
RECORD_KEY = "transfer_record"  # user property: the path of the record a cell wrote
RAN_KEY = "transfer_ran"  # user property: the id of a cell the fixture started to run
BASELINE_KEY = "transfer_baseline"  # user property: (cell id, baseline status, moved verdicts, precision note)


def _writable(folder: Path) -> str | None:
    """Why `folder` (created on demand) cannot take files, or None. Nothing is left behind."""
    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


class Session:
    """One pytest process's run: settings, profile and context (loaded on first use), and what the cells did.

    Problems that need no training (an unknown name, bad --seeds or --shard, a missing --data-dir, an
    unwritable results folder, an unusable baseline file) raise pytest.UsageError here, when pytest configures:
    one line, exit code 4, before any worker starts.
    """

    def __init__(self, config):
        self.config = config
        from harness.definitions.profiles import canonical
        self.profile_name = canonical(setting(config, "profile") or "tiny")  # an alias (minilm) by its name now
        self.paths = {o.dest: setting(config, o.dest) or o.default for o in OPTIONS if o.ini and o.dest not in
                      ("profile", "seeds", "precision")}
        self.calibration = bool(config.getoption("calibration"))
        if self.calibration:  # an A/A run never mixes its records with (or overwrites) a real run's
            self.paths["results_dir"] = str(Path(self.paths["results_dir"]) / "calibration")
        self.filters: dict[str, list[str]] = {}
        self.seeds: list[int] | None = None
        self.auto: int | None = None  # --seeds auto:MAX
        self.shard: tuple[int, int] | None = None
        from harness.results.baselines import baseline_path
        self.baseline_file = baseline_path(self.paths["baselines"], self.profile_name)
        self._profile = None
        self._ctx = None
        self._baselines = None
        self._priors = None
        # what this process saw of the run (the controller's view under xdist)
        self.finished: list[str] = []  # record paths of cells that ran
        self.passed: list[str] = []  # records of cells whose test passed: what --update-baselines records
        self.unchecked: dict[str, list[str]] = {}  # baseline status (new) -> cell ids
        self.moved: list[list[str]] = []  # weakened / strengthened verdicts: cell, lang, outcome, baseline, now, change
        self.notes: dict[str, list[str]] = {}  # note -> cells checked against a baseline of another precision
        self.collected: set[str] = set()  # ids of the grid cells selected to run
        self.ran: set[str] = set()  # ids of the grid cells the transfer_bench fixture started (any outcome)
        self.worker_exits: dict[str, str] = {}  # xdist worker id -> how its process ended, for a crash report
        self.baseline_lines: list[str] = []
        self.baseline_update_failed = False
        self.summary: dict | None = None
        self.plan_text: str | None = None  # --plan: the table of what would run
        self._restore = None  # puts back the environment --precision changed
        try:
            self._check()
        except ValueError as err:
            raise pytest.UsageError(str(err)) from None

    def restore_environment(self) -> None:
        """Undo what --precision set in os.environ (at unconfigure: an in-process pytest run must not leak it)."""
        restore, self._restore = self._restore, None
        if restore:
            restore()

    def _check(self) -> None:
        from harness.definitions.profiles import PROFILES
        from harness.results.baselines import MARGIN, BaselineError

        config = self.config
        check_names("profile", [self.profile_name], PROFILES)
        margin = config.getoption("baseline_margin")
        try:
            self.margin = MARGIN if margin is None else float(margin)
        except ValueError:
            raise ValueError(f"--baseline-margin {margin!r}: expected a number (e.g. 0.05)") from None
        if not self.margin >= 0:
            raise ValueError(f"--baseline-margin {margin!r}: must be zero or more")
        equivalence = config.getoption("margin")
        try:
            self.equivalence = None if equivalence is None else float(equivalence)
        except ValueError:
            raise ValueError(f"--margin {equivalence!r}: expected a number (e.g. 0.02)") from None
        if self.equivalence is not None and not 0 <= self.equivalence < 1:
            raise ValueError(f"--margin {equivalence!r}: must be in [0, 1)")
        if setting(config, "precision") is not None:  # read by the training code from the environment
            from harness.training.devices import set_precision
            self._restore = set_precision(setting(config, "precision"))
        raw_seeds = config.getoption("seeds")
        if raw_seeds is None:
            raw_seeds = config.getini("seeds") or None
        if raw_seeds is not None and parse_auto(raw_seeds) is not None:
            self.auto = parse_auto(raw_seeds)  # the profile's seeds first (checked against MAX in check_profile)
        elif raw_seeds is not None:
            self.seeds = parse_seeds(raw_seeds)
        if config.getoption("shard"):
            from harness.pytest.selection import parse_shard
            self.shard = parse_shard(config.getoption("shard"))
        for kind, valid in (("models", None), ("tasks", TASKS), ("domains", None)):  # rows, domains: the profile's
            raw = config.getoption(kind)
            if raw:
                self.filters[kind] = [x.strip() for x in raw.split(",") if x.strip()]
                if valid:
                    check_names(kind[:-1], self.filters[kind], valid)
        data_dir = self.paths["data_dir"]
        if data_dir and not Path(data_dir).is_dir():
            hint = "; without --data-dir, tiny generates its corpora" if self.profile_name == "tiny" else ""
            raise ValueError(f"--data-dir {data_dir}: no such folder (the {self.profile_name} profile reads its data "
                             f"sets from it{hint})")
        why = _writable(self.paths["results_dir"])
        if why:
            raise ValueError(f"--results-dir {self.paths['results_dir']}: cannot write there ({why})")
        try:
            self.baselines()
        except BaselineError as err:
            raise ValueError(str(err)) from None

    def check_profile(self) -> None:
        """Load the profile now when a --spec file, a profile other than the default one or --models (checked
        against the profile's rows) may be unusable (the default `tiny` without them cannot be, and loading it
        generates its corpora)."""
        if self.paths["spec"] or self.profile_name != "tiny" or self.paths["data_dir"] or "models" in self.filters \
                or self.auto is not None:
            self.profile  # noqa: B018 (loading is the check)

    def baselines(self) -> dict:
        """The profile's baseline entries by cell id, read once per process; BaselineError when unusable."""
        if self._baselines is None:
            from harness.results.baselines import load
            self._baselines = load(self.baseline_file, self.profile_name)
        return self._baselines

    def baseline_priors(self) -> dict:
        """The gains' seed-variance priors fitted on the baseline file (harness.results.baselines.priors_of)."""
        if self._priors is None:
            from harness.results.baselines import priors_of
            self._priors = priors_of(self.baselines())
        return self._priors

    @property
    def profile(self):
        """The profile with the --spec file applied, loaded on first use; pytest.UsageError when unusable."""
        if self._profile is None:
            from harness.definitions.profiles import load_profile
            try:
                self._profile = load_profile(self.profile_name, self.paths["data_dir"],
                                             Path(self.paths["cache_dir"]), spec_file=self.paths["spec"],
                                             model_set=self.config.getoption("model_set"))
                if "domains" in self.filters:
                    check_names("domain", self.filters["domains"], self._profile.domains)
                if "models" in self.filters:
                    check_names("model", self.filters["models"], self._profile.models)
                if self.auto is not None and self.auto < self._profile.seeds:
                    raise ValueError(f"--seeds auto:{self.auto}: MAX is below the profile's {self._profile.seeds} "
                                     f"seeds, which every cell starts with")
            except ValueError as err:
                raise pytest.UsageError(str(err)) from None
        return self._profile

    def cells(self) -> list[Cell]:
        """The cells this run selects by --models/--tasks/--domains and --shard (before `-k`)."""
        from harness.pytest.selection import shard_cells

        selected = [c for c in self.profile.cells()
                    if all(getattr(c, kind[:-1]) in names for kind, names in self.filters.items())]
        return shard_cells(selected, *self.shard) if self.shard else selected

    def marks(self, cell: Cell) -> list:
        """A cell's pytest marks: model, task and domain (registered, so --strict-markers holds for spec domains
        too), its xdist group, and a skip when the profile has no data for it."""
        registered = {line.split(":")[0].strip() for line in self.config.getini("markers")}
        for name in {cell.model, cell.task, cell.domain} - registered:
            self.config.addinivalue_line("markers", f"{name}: transfer-bench cells of {name}")
        marks = [getattr(pytest.mark, cell.model), getattr(pytest.mark, cell.task), getattr(pytest.mark, cell.domain),
                 pytest.mark.xdist_group(cell.group)]
        reason = self.profile.skip_reason(cell)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        return marks

    @property
    def context(self):
        if self._ctx is None:
            import torch

            from harness.running.context import RunContext
            from harness.training.devices import checked_precision, default_device, threads_per_worker, usable_cores
            p = self.profile
            torch.set_num_threads(threads_per_worker(p.threads, usable_cores()))
            device = default_device()
            try:
                checked_precision(device)
            except ValueError as err:
                raise pytest.UsageError(str(err)) from None
            self._ctx = RunContext(profile=p, results_dir=Path(self.paths["results_dir"]),
                                   cache_dir=Path(self.paths["cache_dir"]), seeds=self.seeds or list(range(p.seeds)),
                                   device=device, rerun=self.config.getoption("rerun"),
                                   compile=self.config.getoption("compile"), calibration=self.calibration,
                                   margin=self.equivalence, auto_seeds=self.auto,
                                   train_together=p.train_together
                                   if self.config.getoption("train_together") is None
                                   else self.config.getoption("train_together"),
                                   tune=p.tune if self.config.getoption("tune") is None else self.config.getoption("tune"))
        return self._ctx

    # ------------------------------------------------------------ what the cells did

    def pytest_runtest_logreport(self, report) -> None:
        """Note a test report's record and baseline status (on the controller, reports of every worker); a
        hook, as the session is registered as a plugin."""
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == RAN_KEY:
                self.ran.add(value)
            if key == RECORD_KEY and value not in self.finished:
                self.finished.append(value)
            if key == RECORD_KEY and report.passed and value not in self.passed:
                self.passed.append(value)
            if key == BASELINE_KEY:
                cell, status, moved, note = value
                if status == "new":
                    self.unchecked.setdefault(status, []).append(cell)
                self.moved.extend(moved)
                if note:
                    self.notes.setdefault(note, []).append(cell)

    def crash_message(self, worker: str, nodeid: str) -> str:
        """The failure of the test an xdist worker died in: the cell, the worker and how its process ended."""
        from harness.pytest.selection import cell_of

        cell = cell_of(nodeid)
        ended = f"worker {worker} {self.worker_exits.get(worker, 'crashed')} while running it"
        if cell is None:
            return f"{nodeid}: {ended}"
        return (f"cell {cell.id}: {ended} (out of memory, a segmentation fault or a kill); the other cells went on. "
                f"Finished records are kept: run the same command again to retry the cells without one.")

    # ------------------------------------------------------------ end of run

    def finish(self) -> None:
        """On the controller (or a run without xdist): update the baselines if asked, then write the summary of
        every usable record in the results folder, listing the selected cells without one as missing. A session
        that ran no grid cell (the harness's own tests, `-k` matching none, a collection error) leaves the results
        folder alone: no summary, no folder created."""
        if self.config.getoption("update_baselines") and self.calibration:
            self.baseline_lines.append("--calibration: an A/A run is never recorded as a baseline (nothing written)")
        elif self.config.getoption("update_baselines") and self.passed:
            self._update_baselines()
        if not self.finished and not self.ran:
            return
        from harness.output.report import write_summary
        from harness.results.record import cells_dir, load_records

        results_dir = Path(self.paths["results_dir"])
        records, errors = load_records(results_dir)
        expected = {Path(p).stem for p in self.finished} | self._expected_cells()
        expected |= {p.stem for p in cells_dir(results_dir).glob("*.json")}
        written = []
        if records or expected:
            try:
                written = write_summary(results_dir, records, errors, expected=sorted(expected),
                                        moved=sorted(self.moved), margin=self.margin)
            except OSError as err:
                errors.append(f"{results_dir}: summary not written ({err})")
        self.summary = {"records": records, "errors": errors, "written": written}

    def _expected_cells(self) -> set[str]:
        """The selected cells the profile has data for (skipped cells are not missing)."""
        if not self.collected:
            return set()
        from harness.definitions.grid import parse_cell_id

        cells = [parse_cell_id(i) for i in self.collected]
        try:
            return {c.id for c in cells if not self.profile.skip_reason(c)}
        except pytest.UsageError:  # the workers loaded it, so this is rare (a spec file changed meanwhile)
            return set(self.collected)

    def _update_baselines(self) -> None:
        """Write the records of the cells that passed into the baseline file, once, at the end of the run."""
        from harness.results.baselines import BaselineError, update
        from harness.results.record import RecordError, read_record

        try:
            update(self.baseline_file, self.profile_name, [read_record(Path(p)) for p in self.passed])
            self.baseline_lines.append(f"recorded {len(self.passed)} cell(s) in {self.baseline_file}")
        except (BaselineError, RecordError, OSError) as err:
            self.baseline_lines.append(f"baselines not written: {err}")
            self.baseline_update_failed = True

    def make_plan(self, cells: list[Cell]) -> None:
        """--plan: the table of what the selected cells would run (harness/output/plan.py)."""
        from harness.output.plan import format_plan, plan

        seeds = self.seeds or list(range(self.profile.seeds))
        rows = plan(self.profile, cells, len(seeds), Path(self.paths["results_dir"]))
        self.plan_text = format_plan(self.profile, rows, len(seeds))

    def terminal_lines(self) -> list[tuple[str, list[str]]]:
        """(section title, lines) to print at the end of the run."""
        sections = [("transfer-bench plan", [self.plan_text])] if self.plan_text else []
        lines = list(self.baseline_lines)
        if self.unchecked.get("new"):
            lines.append(f"new (no baseline in {self.baseline_file}): {', '.join(sorted(self.unchecked['new']))}")
        lines += [f"{note} in {self.baseline_file}: {', '.join(sorted(cells))}" for note, cells in sorted(self.notes.items())]
        if self.moved:
            from harness.output.report import moved_table

            lines.append(f"verdicts weakened / strengthened without a significant change (margin {self.margin:g}); "
                         f"reported, not failed:")
            lines.append(moved_table(sorted(self.moved)))
        if lines:
            sections.append(("transfer-bench baselines", lines))
        if self.summary is not None:
            from harness.output.report import terminal_table

            lines = [f"transfer-bench: {err}" for err in self.summary["errors"]]
            if self.summary["records"]:
                lines.append(terminal_table(self.summary["records"]))
            if self.summary["written"]:
                lines.append(f"written: {', '.join(str(p) for p in self.summary['written'])}")
            sections.append(("transfer-bench summary", lines))
        return sections


class BaselineWarning(UserWarning):
    """A cell with no baseline: reported as new, not checked."""


class CellRunner:
    """The `transfer_bench` fixture: runs a cell of the session and checks its record against the baseline."""

    def __init__(self, session: Session, node):
        self.session, self.node = session, node

    def run(self, cell: Cell) -> dict:
        """Run a cell (or reuse its finished record) and return the record; bad input fails in one line."""
        from harness.definitions.data import DataError
        from harness.fileio import OutputError
        from harness.pipeline import run_cell
        from harness.results.record import RecordError, record_path
        from harness.training.models import ModelError

        self.node.user_properties.append((RAN_KEY, cell.id))
        ctx = self.session.context
        try:
            record = run_cell(ctx, cell)
        except (DataError, ModelError, RecordError, OutputError) as err:
            pytest.fail(str(err), pytrace=False)
        self.node.user_properties.append((RECORD_KEY, str(record_path(ctx.results_dir, cell.id))))
        if "PYTEST_XDIST_WORKER" in os.environ or not self.session.config.getoption("verbose") < 0:
            log.info("%s done in %.1fs", cell.id, record["timings"]["total_s"])
        return record

    def check(self, record: dict) -> None:
        """Compare a record with the profile's baseline (harness.results.baselines); with --update-baselines the record
        becomes the baseline instead. A regression fails with a table of what changed; a cell without a
        comparable baseline is a warning and a summary line, or a failure with --strict-baselines."""
        from harness.results.baselines import BaselineError, check

        config = self.session.config
        if config.getoption("update_baselines") or self.session.calibration:  # an A/A run has no baseline
            return
        try:
            result = check(record, self.session.baselines(), self.session.baseline_file, self.session.margin,
                           self.session.baseline_priors())
        except BaselineError as err:
            pytest.fail(str(err), pytrace=False)
        status, message = result.status, result.message
        self.node.user_properties.append((BASELINE_KEY, (record["cell"], status, result.moved, result.note)))
        if status == "changed" or (status != "ok" and config.getoption("strict_baselines")):
            pytest.fail(message + (" (--strict-baselines)" if status != "changed" else ""), pytrace=False)
        if status != "ok":
            warnings.warn(BaselineWarning(message), stacklevel=2)
