"""Bring-your-own data: a TOML spec file (`--spec FILE`) that adds data sets and checkpoints to a profile.

    [[dataset]]
    name = "my-contracts"
    task = "classification"        # classification | sentiment | similarity
    domain = "legal"               # a grid domain or a new one (new cells appear)
    role = "target"                # target (the cell for task x domain) | intermediate (the task's)
    language = "en"
    format = "jsonl"               # jsonl | csv | tsv | hf (hub id in `path`, `HUB_ID:CONFIG` for a config)
    path = "contracts/"            # folder with train.<ext> and test.<ext>
    text = "text"                  # similarity: text_a, text_b
    label = "label"                # similarity: score (a number)
    [dataset.cross_lingual]        # optional zero-shot test files (hf: HUB_ID:CONFIG)
    de = "contracts-de/test.jsonl"

    [models]                       # optional: a grid model row -> hub id or local checkpoint folder
    bert = "bert-base-multilingual-cased"

    [tuning]                       # optional: the per-arm search space (harness/tuning.py), replacing the
    lr = [1e-4, 3e-4]              # profile's keys given here: a run per learning rate, validation-scored
    epochs = [2, 3, 4]             # after each epoch count; validation_fraction (when carving) also allowed

Optional dataset keys: `revision` (hub), `splits` (a table mapping train/validation/test to a file or hub split),
`max_train` / `max_test` (fixed-seed subsample), `train_fraction` (carve train and test from the train source),
`main_metric` (the verdict's metric, e.g. "macro_f1" for imbalanced labels).

Relative paths are resolved against `--data-dir` when it is given, else against the spec file's folder, and
stored absolute, so the runner reads them wherever the profile's own data lives. Everything is checked
when the profile is loaded (pytest collection): keys and values statically, and every local file is read and
validated with harness.data (columns, labels, scores; a test label the train split lacks). Hub data sets are
checked statically only (collection never touches the network). Every problem is a `SpecError` whose message
is one line naming the spec file, the entry and the key.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from harness.grid import MODELS, TASKS
from harness.profiles import DatasetSpec, ModelSpec, Profile
from harness.tuning import TuningError, parse_space

ROLES = ("target", "intermediate")
FORMATS = ("jsonl", "csv", "tsv", "hf")
_COLUMNS = {"text": ("text", "label"), "pair": ("text_a", "text_b", "score")}
_OPTIONAL = {"role", "language", "format", "revision", "cross_lingual", "splits", "max_train", "max_test",
             "train_fraction", "main_metric"}
_REQUIRED = ("name", "task", "domain", "path")
_DOMAIN = re.compile(r"^[a-z][a-z0-9_]*$")


class SpecError(ValueError):
    """A spec file that cannot be used; str() is `SPEC: [[dataset]] N (NAME) key 'K': problem`."""


def _columns(task: str) -> tuple:
    return _COLUMNS["pair" if task == "similarity" else "text"]


def apply_spec(profile: Profile, spec_file: str | Path, data_dir: str | Path | None,
               cache_dir: Path | None = None) -> Profile:
    """The profile with the spec's data sets (targets replace or add cells; intermediates replace the task's)
    and model rows applied; every local file is validated now."""
    spec_file = Path(spec_file)
    doc = _read_toml(spec_file)
    root = Path(data_dir) if data_dir else spec_file.resolve().parent
    unknown = sorted(set(doc) - {"dataset", "models", "tuning"})
    if unknown:
        raise SpecError(f"{spec_file}: key {unknown[0]!r}: unknown top-level key (valid: dataset, models, tuning)")
    try:
        tuning = parse_space(doc["tuning"], str(spec_file), profile.tuning) if "tuning" in doc else profile.tuning
    except TuningError as err:
        raise SpecError(str(err)) from None
    entries = doc.get("dataset", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SpecError(f"{spec_file}: key 'dataset': must be an array of tables ([[dataset]])")
    targets, intermediates = dict(profile.targets), dict(profile.intermediates)
    seen = {}
    for number, entry in enumerate(entries, 1):
        ds = parse_dataset(entry, spec_file, number, root)
        slot = (ds.task, ds.domain) if ds.role == "target" else ds.task
        if (ds.role, slot) in seen:
            key = "domain" if ds.role == "target" else "task"
            raise SpecError(f"{_where(spec_file, number, entry)} key '{key}': a second {ds.role} for {slot} "
                            f"(first: [[dataset]] {seen[(ds.role, slot)]})")
        seen[(ds.role, slot)] = number
        validate_files(ds, spec_file, number, entry, cache_dir)
        (targets if ds.role == "target" else intermediates)[slot] = ds
    models = dict(profile.models)
    models.update(parse_models(doc.get("models", {}), spec_file, root))
    return dataclasses.replace(profile, targets=targets, intermediates=intermediates, models=models, tuning=tuning)


def _read_toml(spec_file: Path) -> dict:
    try:
        with open(spec_file, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{spec_file}: spec file not found (--spec)") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{spec_file}: not valid TOML ({err})") from None


def _where(spec_file: Path, number: int, entry: dict) -> str:
    name = entry.get("name")
    return f"{spec_file}: [[dataset]] {number}" + (f" ({name})" if isinstance(name, str) else "")


def parse_dataset(entry: dict, spec_file: Path, number: int, root: Path) -> DatasetSpec:
    """One [[dataset]] table -> DatasetSpec (paths absolute), with every key and value checked statically."""
    where = _where(spec_file, number, entry)

    def fail(key: str, problem: str):
        raise SpecError(f"{where} key '{key}': {problem}")

    for key in _REQUIRED:
        if key not in entry:
            fail(key, "missing (required: " + ", ".join(_REQUIRED) + ")")
    for key in ("name", "task", "domain", "path", "role", "language", "format", "revision", "main_metric",
                *_COLUMNS["text"], *_COLUMNS["pair"]):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            fail(key, f"must be a non-empty string, got {entry[key]!r}")
    task, role, fmt = entry["task"], entry.get("role", "target"), entry.get("format", "jsonl")
    if task not in TASKS:
        fail("task", f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    if role not in ROLES:
        fail("role", f"unknown role {role!r} (valid: {', '.join(ROLES)})")
    if fmt not in FORMATS:
        fail("format", f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if not _DOMAIN.match(entry["domain"]):
        fail("domain", f"{entry['domain']!r} must be lower-case letters, digits or '_' (it becomes part of cell ids)")
    columns = _columns(task)
    for key in sorted(set(entry) - set(_REQUIRED) - _OPTIONAL - set(columns)):
        other = next((c for c in _COLUMNS.values() if key in c), None)
        fail(key, f"does not apply to {task} (its columns: {', '.join(columns)})" if other else
             f"unknown key (valid: {', '.join(sorted({*_REQUIRED, *_OPTIONAL, *columns}))})")
    for key in ("max_train", "max_test"):
        if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1):
            fail(key, f"must be a positive integer, got {entry[key]!r}")
    fraction = entry.get("train_fraction")
    if fraction is not None and (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
                                 or not 0 < fraction < 1):
        fail("train_fraction", f"must be a number between 0 and 1, got {fraction!r}")
    tables = {key: _string_table(entry, key, fail) for key in ("cross_lingual", "splits")}
    for split in tables["splits"]:
        if split not in ("train", "validation", "test"):
            fail(f"splits.{split}", "unknown split (valid: train, validation, test)")
    from harness.metrics import METRICS  # here: scipy, which metrics imports, costs a second at collection

    if "main_metric" in entry and entry["main_metric"] not in METRICS[task]:
        fail("main_metric", f"unknown metric {entry['main_metric']!r} for {task} (valid: {', '.join(METRICS[task])})")
    if entry.get("language", "en") in tables["cross_lingual"]:
        fail(f"cross_lingual.{entry.get('language', 'en')}", "is the data set's own language (its test split)")
    if role == "intermediate":
        for key in ("cross_lingual", "max_test"):
            if key in entry:
                fail(key, "an intermediate data set is only trained on, never tested")

    def place(ref: str) -> str:
        return ref if fmt == "hf" else str((root / ref).resolve())

    names = dict(zip(("text", "label") if task != "similarity" else ("text", "text_b", "label"),
                     (entry.get(c, c) for c in columns)))
    return DatasetSpec(
        name=entry["name"], task=task, domain=entry["domain"], role=role, language=entry.get("language", "en"),
        format=fmt, path=place(entry["path"]), revision=entry.get("revision"),
        cross_lingual={lang: place(ref) for lang, ref in tables["cross_lingual"].items()},
        splits={split: place(ref) if fmt != "hf" else ref for split, ref in tables["splits"].items()},
        max_train=entry.get("max_train"), max_test=entry.get("max_test"),
        train_fraction=float(fraction) if fraction is not None else None, main_metric=entry.get("main_metric"),
        source=str(spec_file), **names)


def _string_table(entry: dict, key: str, fail) -> dict:
    table = entry.get(key, {})
    if not isinstance(table, dict):
        fail(key, f"must be a table ([dataset.{key}]), got {table!r}")
    for name, value in table.items():
        if not isinstance(value, str) or not value.strip():
            fail(f"{key}.{name}", f"must be a non-empty string, got {value!r}")
    return table


def validate_files(ds: DatasetSpec, spec_file: Path, number: int, entry: dict, cache_dir: Path | None) -> None:
    """Read every local split the runner will read (all rows, no subsampling) and fail on the first problem,
    naming the spec key it comes from. Hub data sets are left to run time (no network at collection)."""
    from harness import data as D

    if ds.format == "hf":
        return
    where = _where(spec_file, number, entry)
    folder = Path(ds.path)
    needs_folder = [s for s in ("train", "test")[: 1 if ds.role == "intermediate" else 2] if s not in ds.splits]
    if needs_folder and not folder.is_dir():
        raise SpecError(f"{where} key 'path': folder not found: {folder}")
    keys = {ds.text: "text_a" if ds.task == "similarity" else "text", ds.label: "score" if ds.task == "similarity"
            else "label", **({ds.text_b: "text_b"} if ds.text_b else {})}
    cache = Path(cache_dir) / "datasets" if cache_dir else None

    def load(key: str, split: str, labels=None, file=None):
        try:
            return D.load_split(ds, Path("/"), split, labels, file=file, cache_dir=cache)
        except D.DataError as err:
            message = str(err)
            field = re.search(r" field '([^']*)'", message)
            blame = keys.get(field.group(1), key) if field and "file not found" not in message else key
            if blame == "label" and "unknown label" in message:
                message = "label set differs between splits: " + message
                blame = key if key.startswith("cross_lingual") else blame
            raise SpecError(f"{where} key '{blame}': {message}") from None

    train = load("splits.train" if "train" in ds.splits else "path", "train")
    if ds.role == "intermediate":
        return
    labels = D.label_set(train, ds.task)
    load("splits.test" if "test" in ds.splits else "path", "test", labels)
    if "validation" in ds.splits:
        load("splits.validation", "validation")
    for lang, ref in sorted(ds.cross_lingual.items()):
        load(f"cross_lingual.{lang}", "test", labels, file=ref)


def parse_models(table, spec_file: Path, root: Path) -> dict:
    """[models]: grid model -> "HUB_ID_OR_FOLDER" or {source = ..., revision = ...}; a folder that exists
    relative to the data root / spec folder is stored absolute."""
    if not isinstance(table, dict):
        raise SpecError(f"{spec_file}: key 'models': must be a table ([models])")
    out = {}
    for name, value in table.items():
        where = f"{spec_file}: [models] key '{name}'"
        if name not in MODELS:
            raise SpecError(f"{where}: unknown model row (valid: {', '.join(MODELS)})")
        value = {"source": value} if isinstance(value, str) else value
        if not isinstance(value, dict) or set(value) - {"source", "revision"} or \
                not all(isinstance(v, str) and v.strip() for v in value.values()) or "source" not in value:
            raise SpecError(f"{where}: must be \"HUB_ID_OR_FOLDER\" or {{source = \"...\", revision = \"...\"}}, "
                            f"got {value!r}")
        source = value["source"]
        if (root / source).is_dir():
            source = str((root / source).resolve())
        out[name] = ModelSpec(name, name, source, revision=value.get("revision"))
    return out
