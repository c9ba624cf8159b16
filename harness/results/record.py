"""The cell record: its declared format, its one validator (used on read and on write), its paths and its
reading and writing (through harness.fileio, the atomic writer every output goes through).

A record is one JSON object per cell, `RESULTS/cells/CELL.json`; the per-example predictions it was computed
from are `RESULTS/predictions/CELL.npz`. `CellRecord` declares the fields and `CHECKS` holds one check per
field. A field added by a later change is one `NotRequired[...]` line in `CellRecord` and one entry in
`CHECKS`; fields this harness does not know are kept as they are (a newer record stays readable), but like
every other number in the record they must be finite. A record of another schema version is refused in one
line; a version 2 would come with a function here that turns a version-1 record into one.

Length (over ~350 lines): one check per declared field, kept beside the declaration they enforce.
"""

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Callable, NotRequired, TypedDict

import numpy as np

from harness.definitions.grid import ARMS, parse_cell_id
from harness.fileio import atomic_write, atomic_write_text

SCHEMA_VERSION = 1
GAIN_FIELDS = ("mean", "ci_low", "ci_high", "verdict")
UNINFORMATIVE = "uninformative"  # both arms predict one and the same class: the gain says nothing about transfer
FROZEN = "frozen"  # the frozen floor (harness.running.probe): beside the ARMS under metrics / metrics_se, no seeds
# positive / negative: the interval excludes 0; equivalent: it lies inside +-margin; inconclusive: anything else
VERDICTS = ("positive", "negative", "equivalent", "inconclusive", UNINFORMATIVE)
OLD_VERDICTS = {"neutral": "inconclusive"}  # the words of earlier records and baseline files, read as today's


class Interval(TypedDict):
    """A difference of a main metric with its 95% interval: a gain, or a robustness difference."""
    mean: float
    ci_low: float
    ci_high: float
    verdict: str  # one of VERDICTS
    # a gain also carries what a comparison with another run needs (harness.results.baselines):
    per_seed: NotRequired[list[float]]  # the per-seed gains, in the order of `seeds`
    se_boot: NotRequired[float]  # bootstrap standard error of the seed-mean gain over test-set resamples
    se_seeds: NotRequired[list[float]]  # each seed's own gain's bootstrap standard error (the shared part: shared_se)
    p_value: NotRequired[float]  # two-sided bootstrap p-value (the summary's FDR q-values read it)
    mdc: NotRequired[float]  # minimum detectable change: what the baseline check catches with 80% power
    margin: NotRequired[float]  # the equivalence margin the verdict was read with
    note: NotRequired[str]  # why a verdict is `uninformative`


class CellRecord(TypedDict):
    schema: int  # SCHEMA_VERSION
    cell: str  # MODEL-TASK-DOMAIN, also the file name
    profile: str
    model: str  # the checkpoint or config the profile maps the model name to
    task: str
    domain: str
    seeds: list[int]  # training seeds, one run of each arm per seed
    main_metric: str
    language: str  # the target (training) language
    languages: list[str]  # every test language, the target language first
    metrics: dict[str, dict[str, dict[str, float]]]  # arm -> language -> metric -> mean over seeds
    gain: dict[str, Interval]  # language -> intermediate - direct in the main metric
    intermediate_key: str | None  # cache key of the first seed's intermediate model
    timings: dict[str, float]  # seconds per phase, examples/s
    env: dict[str, Any]  # python, torch, transformers, device, git commit, ...
    metrics_per_seed: NotRequired[dict[str, dict[str, dict[str, list[float]]]]]  # arm -> language -> metric
    intermediate: NotRequired[list[dict[str, Any]]]  # per seed: key, trained_here, seconds, examples/s
    data: NotRequired[dict[str, Any]]  # data set names, sizes, digest, labels
    hyperparameters: NotRequired[dict[str, Any]]
    config_key: NotRequired[str]  # everything that determines the numbers (resume reuses equal keys)
    throughput: NotRequired[dict[str, Any]]  # FLOP utilisation and peak memory
    notes: NotRequired[list[str]]
    metrics_se: NotRequired[dict[str, dict[str, dict[str, float]]]]  # arm -> language -> main metric -> bootstrap SE
    main_metric_reason: NotRequired[str]  # why the main metric is what it is (e.g. imbalanced labels: macro-F1)
    budget: NotRequired[dict[str, Any]]  # optimizer steps behind each arm's evaluated model (harness.running.cell._budget)
    tuning: NotRequired[dict[str, Any]]  # per-arm selection: space, every trial's validation score, the choices
    under_trained: NotRequired[list[str]]  # arms the convergence check flagged (harness.running.tuning)
    frozen: NotRequired[dict[str, Any]]  # how the frozen floor was computed: pooling, features, probe C, seconds
    # arms whose main metric is significantly below the frozen floor's: {arm, language, mean, ci_low, ci_high}
    # (arm - floor and its paired-bootstrap interval; harness.results.analysis.below_floor)
    below_floor: NotRequired[list[dict[str, Any]]]
    # head_init "probe" (harness.running.probe): {mode, arms: arm -> [{seed, layer, C, validation, ...}]}
    head_init: NotRequired[dict[str, Any]]
    calibration: NotRequired[bool]  # an A/A run: the `intermediate` arm is a second direct arm (--calibration)
    margin: NotRequired[float]  # the equivalence margin of the gains' verdicts (harness.definitions.metrics)


class RecordError(Exception):
    """A record that cannot be used or written; str() is one line naming the file and the field."""


class _Invalid(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")


# ---------------------------------------------------------------- the checks, one per field

def _number(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(where, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _Invalid(where, f"{value} is not a finite number")


def _text(value, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise _Invalid(where, f"expected a non-empty string, got {value!r}")


def _flag(value, where: str) -> None:
    if not isinstance(value, bool):
        raise _Invalid(where, f"expected true or false, got {value!r}")


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected an object, got {value!r:.60}")
    return value


def _listing(value, where: str) -> list:
    if not isinstance(value, list):
        raise _Invalid(where, f"expected a list, got {value!r:.60}")
    return value


def _entry(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise _Invalid(f"{where}.{key}", "missing")
    return mapping[key]


def check_interval(value, where: str) -> None:
    """A gain or robustness interval: finite mean and bounds, a known verdict."""
    _mapping(value, where)
    for name in GAIN_FIELDS[:3]:
        _number(_entry(value, name, where), f"{where}.{name}")
    if value.get("verdict") in OLD_VERDICTS:
        value["verdict"] = OLD_VERDICTS[value["verdict"]]
    if _entry(value, "verdict", where) not in VERDICTS:
        raise _Invalid(f"{where}.verdict", f"expected one of {', '.join(VERDICTS)}, got {value['verdict']!r}")
    for name in ("se_boot", "p_value", "mdc"):
        if name in value:
            _number(value[name], f"{where}.{name}")
    for key in ("per_seed", "se_seeds"):
        for i, x in enumerate(_listing(value[key], f"{where}.{key}") if key in value else []):
            _number(x, f"{where}.{key}[{i}]")


def _cell(value, record: dict) -> None:
    _text(value, "cell")
    try:
        cell = parse_cell_id(value)
    except ValueError:
        cell = None
    if cell is None or any(c in value for c in "/\\ \t\n") or value.startswith("."):
        raise _Invalid("cell", f"{value!r} is not MODEL-TASK-DOMAIN")
    for name, part in (("task", cell.task), ("domain", cell.domain)):
        if record.get(name) != part:
            raise _Invalid("cell", f"{value!r} does not match {name} {record.get(name)!r}")


def _seeds(value, record: dict) -> None:
    _listing(value, "seeds")
    if not value or any(isinstance(s, bool) or not isinstance(s, int) for s in value) or len(set(value)) < len(value):
        raise _Invalid("seeds", f"expected a non-empty list of distinct integers, got {value!r:.60}")


def _languages(value, record: dict) -> None:
    _listing(value, "languages")
    if not value or any(not isinstance(x, str) or not x for x in value):
        raise _Invalid("languages", f"expected a non-empty list of language codes, got {value!r:.60}")
    if record.get("language") not in value:
        raise _Invalid("languages", f"the target language {record.get('language')!r} is not in {value}")


def _metrics(value, record: dict) -> None:
    _mapping(value, "metrics")
    for arm in ARMS + ((FROZEN,) if FROZEN in value else ()):
        by_lang = _mapping(_entry(value, arm, "metrics"), f"metrics.{arm}")
        for lang in record["languages"]:
            where = f"metrics.{arm}.{lang}"
            scores = _mapping(_entry(by_lang, lang, f"metrics.{arm}"), where)
            _entry(scores, record["main_metric"], where)
            for name, x in scores.items():
                _number(x, f"{where}.{name}")


def _gain(value, record: dict) -> None:
    _mapping(value, "gain")
    for lang in record["languages"]:
        check_interval(_entry(value, lang, "gain"), f"gain.{lang}")


def _metrics_se(value, record: dict) -> None:
    for arm, by_lang in _mapping(value, "metrics_se").items():
        for lang, scores in _mapping(by_lang, f"metrics_se.{arm}").items():
            for name, x in _mapping(scores, f"metrics_se.{arm}.{lang}").items():
                _number(x, f"metrics_se.{arm}.{lang}.{name}")
    if FROZEN in value:
        for lang in record["languages"]:
            _entry(_mapping(value[FROZEN], f"metrics_se.{FROZEN}"), lang, f"metrics_se.{FROZEN}")


def _below_floor(value, record: dict) -> None:
    if FROZEN not in record.get("metrics", {}):
        raise _Invalid("below_floor", f"without a frozen floor (metrics.{FROZEN})")
    for i, item in enumerate(_listing(value, "below_floor")):
        where = f"below_floor[{i}]"
        _mapping(item, where)
        if _entry(item, "arm", where) not in ARMS:
            raise _Invalid(f"{where}.arm", f"expected one of {', '.join(ARMS)}, got {item['arm']!r}")
        if _entry(item, "language", where) not in record["languages"]:
            raise _Invalid(f"{where}.language", f"{item['language']!r} is not a test language of the cell")
        for name in ("mean", "ci_low", "ci_high"):
            _number(_entry(item, name, where), f"{where}.{name}")


def _numbers(field: str):
    def check(value, record: dict) -> None:
        for name, x in _mapping(value, field).items():
            _number(x, f"{field}.{name}")
    return check


def _metrics_per_seed(value, record: dict) -> None:
    for arm, by_lang in _mapping(value, "metrics_per_seed").items():
        for lang, scores in _mapping(by_lang, f"metrics_per_seed.{arm}").items():
            for name, xs in _mapping(scores, f"metrics_per_seed.{arm}.{lang}").items():
                where = f"metrics_per_seed.{arm}.{lang}.{name}"
                if len(_listing(xs, where)) != len(record["seeds"]):
                    raise _Invalid(where, f"{len(xs)} values for {len(record['seeds'])} seeds")
                for i, x in enumerate(xs):
                    _number(x, f"{where}[{i}]")


def _of(check: Callable[[Any, str], Any], field: str, optional: bool = False):
    return lambda value, record: None if optional and value is None else check(value, field)


def _list_of(check: Callable[[Any, str], Any], field: str):
    def each(value, record: dict) -> None:
        for i, x in enumerate(_listing(value, field)):
            check(x, f"{field}[{i}]")
    return each


# Checked in this order (later checks rely on earlier fields: languages before metrics and gain).
CHECKS: dict[str, Callable[[Any, dict], None]] = {
    "schema": lambda value, record: None,  # read_record and write_record check the version first
    "task": _of(_text, "task"), "domain": _of(_text, "domain"), "cell": _cell, "profile": _of(_text, "profile"),
    "model": _of(_text, "model"), "seeds": _seeds, "main_metric": _of(_text, "main_metric"),
    "language": _of(_text, "language"), "languages": _languages, "metrics": _metrics, "gain": _gain,
    "intermediate_key": _of(_text, "intermediate_key", optional=True), "timings": _numbers("timings"),
    "env": _of(_mapping, "env"),
    "metrics_per_seed": _metrics_per_seed, "intermediate": _list_of(_mapping, "intermediate"),
    "data": _of(_mapping, "data"), "hyperparameters": _of(_mapping, "hyperparameters"),
    "config_key": _of(_text, "config_key"), "throughput": _of(_mapping, "throughput"),
    "notes": _list_of(_text, "notes"),
    "metrics_se": _metrics_se, "main_metric_reason": _of(_text, "main_metric_reason"),
    "budget": _of(_mapping, "budget"), "tuning": _of(_mapping, "tuning"),
    "under_trained": _list_of(_text, "under_trained"),
    "frozen": _of(_mapping, "frozen"), "below_floor": _below_floor,
    "head_init": _of(_mapping, "head_init"),
    "calibration": _of(_flag, "calibration"),
    "margin": _of(_number, "margin"),
}


def _all_finite(value, where: str) -> None:
    """Every number anywhere in the record is finite (JSON has no NaN; fields added later are covered too)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(where, f"{value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _all_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _all_finite(v, f"{where}[{i}]")


def problem(record) -> str | None:
    """What is wrong with a record, as `field 'F': problem` (the first problem found), or None."""
    if not isinstance(record, dict):
        return "not a cell record (a JSON object is expected)"
    if record.get("schema") != SCHEMA_VERSION:
        return (f"schema version {record.get('schema')!r}, this harness reads {SCHEMA_VERSION} "
                f"(run the cell again with --rerun)")
    required = CellRecord.__required_keys__
    missing = [k for k in CHECKS if k in required and k not in record]
    if missing:
        return f"field '{missing[0]}' missing"
    try:
        for name, check in CHECKS.items():
            if name in record:
                check(record[name], record)
        _all_finite(record, "")
    except _Invalid as err:
        return str(err)
    return None


def validate(record, path: Path) -> CellRecord:
    """The record itself when it is valid, else RecordError `PATH: field 'F': problem`."""
    found = problem(record)
    if found is not None:
        raise RecordError(f"{path}: {found}")
    return record


# ---------------------------------------------------------------- paths

def cells_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "cells"


def record_path(results_dir: Path, cell_id: str) -> Path:
    return cells_dir(results_dir) / f"{cell_id}.json"


def predictions_path(results_dir: Path, cell_id: str) -> Path:
    return Path(results_dir) / "predictions" / f"{cell_id}.npz"


# ---------------------------------------------------------------- reading and writing records

def write_record(path: Path, record: CellRecord) -> None:
    """Validate and write atomically; an invalid record raises RecordError and writes nothing."""
    found = problem(record)
    if found is not None:
        raise RecordError(f"{path}: not written, {found}")
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path, error: type[Exception] | None = None, hint: str = ""):
    """A JSON file's content; an unreadable or invalid file raises `error` (RecordError) in one line naming it."""
    error = error or RecordError
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON (line {err.lineno}: {err.msg}){hint}") from None


def read_record(path: Path) -> CellRecord:
    """Load and validate one record; any problem is a one-line RecordError naming the file and the field."""
    path = Path(path)
    record = read_json(path)
    validate(record, path)
    if record["cell"] != path.stem:
        raise RecordError(f"{path}: field 'cell': {record['cell']!r} does not match the file name")
    return record


def load_records(results_dir: Path) -> tuple[list[CellRecord], list[str]]:
    """All valid records of a results directory, and one error line per record that is not."""
    records, errors = [], []
    for path in sorted(cells_dir(results_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except RecordError as err:
            errors.append(str(err))
    return records, errors


def save_predictions(results_dir: Path, cell_id: str, arrays: dict[str, np.ndarray]) -> Path:
    """Per-example predictions (`y_true/LANG`, `ARM/LANG` of shape (seeds, n)) as one .npz, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(predictions_path(results_dir, cell_id), lambda f: f.write(buf.getbuffer()))


def load_predictions(results_dir: Path, cell_id: str) -> dict[str, np.ndarray] | None:
    """The saved predictions of a cell; None when there are none; RecordError when the file is unreadable."""
    path = predictions_path(results_dir, cell_id)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RecordError(f"{path}: predictions unreadable ({err})") from None

