"""Parse and validate the TOML format shared by `--spec` files and the shipped profiles (harness/definitions/profiles/).

    [[dataset]]
    name = "my-contracts"
    task = "classification"        # a task type of harness/definitions/tasks.py: classification | sentiment | similarity | nli
    domain = "legal"               # a grid domain or a new one (new cells appear)
    role = "target"                # target (the cell for task x domain) | intermediate (the task's)
    language = "en"
    format = "jsonl"               # jsonl | csv | tsv | hf (hub id in `path`, `HUB_ID:CONFIG` for a config)
    path = "contracts/"            # folder with train.<ext> and test.<ext>
    text = "text"                  # pair tasks (similarity, nli): text_a, text_b
    label = "label"                # similarity: score (a number)
    [dataset.cross_lingual]        # optional zero-shot test files (hf: HUB_ID:CONFIG)
    de = "contracts-de/test.jsonl"

    [models]                       # optional: a grid model row -> hub id or local checkpoint folder
    bert = "bert-base-multilingual-cased"

Optional dataset keys: `revision` (hub), `splits` (a table mapping train/validation/test to a file or hub split),
`max_train` / `max_test` / `max_validation` (fixed-seed subsample), `train_fraction` (carve train and test from the train source),
`main_metric` (the verdict's metric, e.g. "macro_f1" for imbalanced labels),
`layout` (hub: `configs` or `folders` for a refs/convert/parquet export), `sizes` ({train, test}: row counts
of the source, for --plan), `similarity_head` (a similarity target's head: `cross` | `bi`, over its model row's).
A model row may be a table {source, revision, pooling, similarity_head, head_init, text_prefix} or {skip = "why"}
(sources: harness/definitions/sources.py; heads: harness/running/heads.py; `text_prefix`: put before every text, e5's
"query: "); a profile file may add rows beyond the grid's; its [profile] table may set the heads for every row.

Besides [[dataset]] and [models], a spec file may set `[train.target]` / `[train.intermediate]` (TrainConfig
fields), `[missing]` ("TASK-DOMAIN" = why there is no data set) and `[model_sets.NAME]` (rows selected with
--model-set NAME). A profile file adds a `[profile]` table (seeds, threads, requires_data_dir:
what to pass as --data-dir when its paths are local) and is a complete grid; a spec file changes the profile it is applied to.

A `[tuning]` table sets the per-arm search space (harness/running/tuning.py), replacing the profile's keys given there:
`lr = [1e-4, 3e-4]` (a training run per learning rate), `max_epochs = 10` (each run's epoch limit), `patience = 3`
(a run stops after that many epochs without validation improvement), `validation_fraction` (when a validation
split is carved from training data), `min_validation` (fewer validation rows: the fixed recipe, untuned). The earlier `epochs` list is refused, naming what replaced it.

Relative paths are resolved against `--data-dir` when it is given, else against the spec file's folder, and
stored absolute, so a cell reads them wherever the profile's own data lives. Everything is checked
when the profile is loaded (pytest collection): keys and values statically, and every local file is read and
validated with harness.definitions.data (columns, labels, scores; a test label the train split lacks). Hub data sets are
checked statically only (collection never touches the network). Every problem is a `SpecError` whose message
is one line naming the spec file, the entry and the key.

Length (over ~350 lines): the one grammar of the format; each key's check and its one-line error stay next to
the key's parsing, so the messages cannot drift from what is accepted.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import tomllib

from harness.definitions import data as D
from harness.definitions.config import (
    HEAD_INITS,
    POOLINGS,
    SIMILARITY_HEADS,
    DatasetConfig,
    ModelConfig,
    Profile,
    TrainConfig,
)
from harness.definitions.grid import MODELS, TASKS
from harness.definitions.metrics import parse_margins
from harness.definitions.sources import resolve
from harness.definitions.space import TuningError, parse_space
from harness.definitions.tasks import TASK_TYPES, task_type

ROLES = ("target", "intermediate")
FORMATS = ("jsonl", "csv", "tsv", "hf")
LAYOUTS = ("configs", "folders")
_OPTIONAL = {"role", "language", "format", "revision", "cross_lingual", "splits", "max_train", "max_test", "max_validation",
             "train_fraction", "layout", "sizes", "main_metric", "similarity_head"}
_REQUIRED = ("name", "task", "domain", "path")
_COLUMN_KEYS = sorted({c for t in TASK_TYPES.values() for c in t.columns})
_DOMAIN = re.compile(r"^[a-z][a-z0-9_]*$")
_SPEC_TABLES = ("dataset", "models", "model_sets", "train", "missing", "tuning", "margins")
_PROFILE_KEYS = {"seeds": int, "threads": int, "requires_data_dir": str, "tune": bool, "train_together": bool,
                 "ensemble": bool,  # the deprecated name of train_together
                 "pooling": str,
                 "similarity_head": str, "head_init": str}
# keys of a closed set of values
_CHOICES = {"pooling": POOLINGS, "similarity_head": SIMILARITY_HEADS, "head_init": HEAD_INITS}


class SpecError(ValueError):
    """A spec file that cannot be used; str() is `SPEC: [[dataset]] N (NAME) key 'K': problem`."""


def apply_spec(profile: Profile, spec_file: str | Path, data_dir: str | Path | None,
               cache_dir: Path | None = None) -> Profile:
    """The profile with the spec file's data sets (targets replace or add cells; intermediates replace the task's),
    model rows, hyper-parameters and notes applied; every local file is validated now."""
    spec_file = Path(spec_file)
    doc = _read_toml(spec_file)
    root = Path(data_dir) if data_dir else spec_file.resolve().parent
    _check_top_level(doc, spec_file, _SPEC_TABLES)
    return _apply(profile, doc, spec_file, root, cache_dir)


def read_profile(profile_file: Path, name: str, data_dir: str | Path | None, cache_dir: Path | None) -> Profile:
    """A complete profile from a TOML file in the spec format plus a [profile] table (harness/definitions/profiles/*.toml)."""
    doc = _read_toml(profile_file)
    _check_top_level(doc, profile_file, ("profile",) + _SPEC_TABLES)
    meta = doc.get("profile", {})
    where = f"{profile_file}: [profile]"
    if not isinstance(meta, dict):
        raise SpecError(f"{where}: must be a table")
    for key, value in meta.items():
        if key not in _PROFILE_KEYS:
            raise SpecError(f"{where} key '{key}': unknown key (valid: {', '.join(_PROFILE_KEYS)})")
        if _PROFILE_KEYS[key] is bool and not isinstance(value, bool) or _PROFILE_KEYS[key] is not bool and (
                not isinstance(value, _PROFILE_KEYS[key]) or isinstance(value, bool) or value in ("", 0)):
            raise SpecError(f"{where} key '{key}': must be a non-empty {_PROFILE_KEYS[key].__name__}, got {value!r}")
        _choice(key, value, f"{where} key '{key}'")
    if meta.get("requires_data_dir") and not data_dir:
        raise ValueError(f"profile {name!r} reads local data sets: pass --data-dir DIR, "
                         f"{meta['requires_data_dir']}")
    root = Path(data_dir) if data_dir else Path(".")
    empty = Profile(name=name, models={}, targets={}, intermediates={}, data_root=root,
                    seeds=meta.get("seeds", 1), threads=meta.get("threads"), tune=meta.get("tune", False),
                    train_together=meta.get("train_together", meta.get("ensemble", False)),
                    pooling=meta.get("pooling"), similarity_head=meta.get("similarity_head", "cross"),
                    head_init=meta.get("head_init", "random"))
    profile = _apply(empty, doc, profile_file, root, cache_dir)
    missing = [m for m in MODELS if m not in profile.models]
    if missing:
        raise SpecError(f"{profile_file}: [models] key '{missing[0]}': missing (a profile names every row: "
                        f"{', '.join(MODELS)})")
    return profile


def _choice(key: str, value, at: str) -> None:
    """A key whose value is one of a closed set (`pooling`, `similarity_head`): `AT: unknown KEY 'V' (valid: ...)`."""
    if key in _CHOICES and value not in _CHOICES[key]:
        raise SpecError(f"{at}: unknown {key} {value!r} (valid: {', '.join(_CHOICES[key])})")


def _check_top_level(doc: dict, spec_file: Path, valid: tuple) -> None:
    unknown = sorted(set(doc) - set(valid))
    if unknown:
        raise SpecError(f"{spec_file}: key {unknown[0]!r}: unknown top-level key (valid: {', '.join(valid)})")


def _apply(profile: Profile, doc: dict, spec_file: Path, root: Path, cache_dir: Path | None) -> Profile:
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
    rows = tuple(profile.models) or None  # a spec file names the profile's rows; a profile file may add rows
    models = {**profile.models, **parse_models(doc.get("models", {}), spec_file, root, cache_dir=cache_dir, rows=rows)}
    model_sets = dict(profile.model_sets)
    sets = doc.get("model_sets", {})
    if not isinstance(sets, dict) or not all(isinstance(v, dict) for v in sets.values()):
        raise SpecError(f"{spec_file}: key 'model_sets': must be tables ([model_sets.NAME])")
    for set_name, table in sets.items():
        model_sets[set_name] = parse_models(table, spec_file, root, f"[model_sets.{set_name}]", cache_dir, rows)
    return dataclasses.replace(profile, targets=targets, intermediates=intermediates, models=models,
                               model_sets=model_sets, missing={**profile.missing, **_missing(doc, spec_file)},
                               tuning=_tuning(doc, spec_file, profile), **_train(doc, spec_file, profile),
                               margins={**profile.margins, **_margins(doc, spec_file)})


def _margins(doc: dict, spec_file: Path) -> dict:
    """[margins]: the equivalence margin per main metric (harness.definitions.metrics.parse_margins)."""
    try:
        return parse_margins(doc.get("margins", {}), str(spec_file))
    except ValueError as err:
        raise SpecError(str(err)) from None


def _tuning(doc: dict, spec_file: Path, profile: Profile):
    """[tuning]: the per-arm search space, replacing the profile's keys given there."""
    if "tuning" not in doc:
        return profile.tuning
    try:
        return parse_space(doc["tuning"], str(spec_file), profile.tuning)
    except TuningError as err:
        raise SpecError(str(err)) from None


def _train(doc: dict, spec_file: Path, profile: Profile) -> dict:
    """[train.target] / [train.intermediate]: TrainConfig fields replacing the profile's."""
    table = doc.get("train", {})
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for phase, values in table.items() if isinstance(table, dict) else [("", table)]:
        where = f"{spec_file}: [train.{phase}]"
        if phase not in ("target", "intermediate") or not isinstance(values, dict):
            raise SpecError(f"{where}: expected the tables [train.target] and [train.intermediate]")
        for key, value in values.items():
            if key not in fields:
                raise SpecError(f"{where} key '{key}': unknown hyper-parameter (valid: {', '.join(fields)})")
            number = (int,) if fields[key] == "int" else (int, float)
            if not isinstance(value, number) or isinstance(value, bool) or value < 0:
                raise SpecError(f"{where} key '{key}': must be a non-negative {fields[key]}, got {value!r}")
        base = getattr(profile, f"{phase}_train")
        out[f"{phase}_train"] = dataclasses.replace(
            base, **{k: float(v) if fields[k] == "float" else v for k, v in values.items()})
    return out


def _missing(doc: dict, spec_file: Path) -> dict:
    """[missing]: "TASK-DOMAIN" = why the profile has no data set for that cell (its skip reason)."""
    table = doc.get("missing", {})
    out = {}
    for key, why in table.items() if isinstance(table, dict) else [("", table)]:
        task, _, domain = key.partition("-")
        if task not in TASKS or not _DOMAIN.match(domain) or not isinstance(why, str) or not why.strip():
            raise SpecError(f"{spec_file}: [missing] key '{key}': expected \"TASK-DOMAIN\" = \"why\" with a task of "
                            f"{', '.join(TASKS)}")
        out[(task, domain)] = why
    return out


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


def parse_dataset(entry: dict, spec_file: Path, number: int, root: Path) -> DatasetConfig:
    """One [[dataset]] table -> DatasetConfig (paths absolute), with every key and value checked statically."""
    where = _where(spec_file, number, entry)

    def fail(key: str, problem: str):
        raise SpecError(f"{where} key '{key}': {problem}")

    for key in _REQUIRED:
        if key not in entry:
            fail(key, "missing (required: " + ", ".join(_REQUIRED) + ")")
    for key in ("name", "task", "domain", "path", "role", "language", "format", "revision", "layout", "main_metric",
                *_COLUMN_KEYS):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            fail(key, f"must be a non-empty string, got {entry[key]!r}")
    task, role, fmt = entry["task"], entry.get("role", "target"), entry.get("format", "jsonl")
    if task not in TASKS:
        fail("task", f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    if role not in ROLES:
        fail("role", f"unknown role {role!r} (valid: {', '.join(ROLES)})")
    if fmt not in FORMATS:
        fail("format", f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if entry.get("layout", "configs") not in LAYOUTS or "layout" in entry and fmt != "hf":
        fail("layout", f"must be one of {', '.join(LAYOUTS)}, for format hf only; got {entry['layout']!r}")
    if not _DOMAIN.match(entry["domain"]):
        fail("domain", f"{entry['domain']!r} must be lower-case letters, digits or '_' (it becomes part of cell ids)")
    columns = task_type(task).columns
    for key in sorted(set(entry) - set(_REQUIRED) - _OPTIONAL - set(columns)):
        fail(key, f"does not apply to {task} (its columns: {', '.join(columns)})" if key in _COLUMN_KEYS else
             f"unknown key (valid: {', '.join(sorted({*_REQUIRED, *_OPTIONAL, *columns}))})")
    for key in ("max_train", "max_test", "max_validation"):
        if key in entry and (not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 1):
            fail(key, f"must be a positive integer, got {entry[key]!r}")
    fraction = entry.get("train_fraction")
    if fraction is not None and (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
                                 or not 0 < fraction < 1):
        fail("train_fraction", f"must be a number between 0 and 1, got {fraction!r}")
    sizes = entry.get("sizes", {})
    if not isinstance(sizes, dict) or set(sizes) - {"train", "test"} or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes.values()):
        fail("sizes", f"must be a table {{train = N, test = N}} of positive integers, got {sizes!r}")
    tables = {key: _string_table(entry, key, fail) for key in ("cross_lingual", "splits")}
    for split in tables["splits"]:
        if split not in ("train", "validation", "test"):
            fail(f"splits.{split}", "unknown split (valid: train, validation, test)")
    if "similarity_head" in entry:
        _choice("similarity_head", entry["similarity_head"], f"{where} key 'similarity_head'")
        kind = task_type(task)
        if not (kind.pair and kind.regression):
            fail("similarity_head", f"a {entry['similarity_head']} head needs a sentence-pair similarity task "
                 f"(columns text_a, text_b, score); {task} " + ("has one text" if not kind.pair else
                                                              "classifies its pairs, it does not score them"))
        if role != "target":
            fail("similarity_head", "set it on the target data set or the model row: the intermediate model is "
                 "trained with the head of the cell that uses it")
    metrics = task_type(task).metrics
    if "main_metric" in entry and entry["main_metric"] not in metrics:
        fail("main_metric", f"unknown metric {entry['main_metric']!r} for {task} (valid: {', '.join(metrics)})")
    if entry.get("language", "en") in tables["cross_lingual"]:
        fail(f"cross_lingual.{entry.get('language', 'en')}", "is the data set's own language (its test split)")
    if role == "intermediate":
        for key in ("cross_lingual", "max_test", "max_validation"):
            if key in entry:
                fail(key, "an intermediate data set is only trained on, never tested")

    def place(ref: str) -> str:
        return ref if fmt == "hf" else str((root / ref).resolve())

    fields = ("text", "text_b", "label") if len(columns) == 3 else ("text", "label")
    names = dict(zip(fields, (entry.get(c, c) for c in columns)))
    return DatasetConfig(
        name=entry["name"], task=task, domain=entry["domain"], role=role, language=entry.get("language", "en"),
        format=fmt, path=place(entry["path"]), revision=entry.get("revision"),
        cross_lingual={lang: place(ref) for lang, ref in tables["cross_lingual"].items()},
        splits={split: place(ref) if fmt != "hf" else ref for split, ref in tables["splits"].items()},
        max_train=entry.get("max_train"), max_test=entry.get("max_test"),
        max_validation=entry.get("max_validation"),
        train_fraction=float(fraction) if fraction is not None else None, layout=entry.get("layout", "configs"),
        sizes=dict(sizes), main_metric=entry.get("main_metric"), source=str(spec_file),
        similarity_head=entry.get("similarity_head"), **names)


def _string_table(entry: dict, key: str, fail) -> dict:
    table = entry.get(key, {})
    if not isinstance(table, dict):
        fail(key, f"must be a table ([dataset.{key}]), got {table!r}")
    for name, value in table.items():
        if not isinstance(value, str) or not value.strip():
            fail(f"{key}.{name}", f"must be a non-empty string, got {value!r}")
    return table


def validate_files(ds: DatasetConfig, spec_file: Path, number: int, entry: dict, cache_dir: Path | None) -> None:
    """Read every local split a cell will read (all rows, no subsampling) and fail on the first problem,
    naming the spec-file key it comes from. Hub data sets are left to run time (no network at collection)."""
    if ds.format == "hf":
        return
    where = _where(spec_file, number, entry)
    folder = Path(ds.path)
    needs_folder = [s for s in ("train", "test")[: 1 if ds.role == "intermediate" else 2] if s not in ds.splits]
    if needs_folder and not folder.is_dir():
        raise SpecError(f"{where} key 'path': folder not found: {folder}")
    columns = task_type(ds.task).columns
    keys = {ds.text: columns[0], ds.label: columns[-1], **({ds.text_b: columns[1]} if ds.text_b else {})}
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
    labels = task_type(ds.task).label_set(train.labels)
    load("splits.test" if "test" in ds.splits else "path", "test", labels)
    if "validation" in ds.splits:
        load("splits.validation", "validation")
    for lang, ref in sorted(ds.cross_lingual.items()):
        load(f"cross_lingual.{lang}", "test", labels, file=ref)


def parse_models(table, spec_file: Path, root: Path, where: str = "[models]", cache_dir=None, rows=None) -> dict:
    """[models]: model row -> "HUB_ID_OR_FOLDER", {source = ..., ...} or {skip = "why"}; `rows`: the names allowed
    (None: also a new lower-case name, in a profile file); sources resolved by harness.definitions.sources."""
    if not isinstance(table, dict):
        raise SpecError(f"{spec_file}: key 'models': must be a table ([models])")
    out = {}
    for name, value in table.items():
        at = f"{spec_file}: {where} key '{name}'"
        if name not in (rows or MODELS) and (rows or not _DOMAIN.match(name)):
            raise SpecError(f"{at}: unknown model row (valid: {', '.join(rows or MODELS)}; profile files add rows)")
        value = {"source": value} if isinstance(value, str) else value
        if not isinstance(value, dict) or set(value) - {"source", "revision", "skip", "text_prefix", *_CHOICES} or \
                not all(isinstance(v, str) and v.strip() for v in value.values()) or \
                ("source" in value) == ("skip" in value):
            raise SpecError(f"{at}: must be \"HUB_ID_OR_FOLDER\", {{source = \"...\", revision = \"...\"}} (optional "
                            f"pooling = \"cls\" | \"mean\", similarity_head = \"cross\" | \"bi\", head_init = "
                            f"\"random\" | \"probe\", text_prefix = \"...\") or {{skip = \"why\"}}, got {value!r}")
        for key in _CHOICES:
            if key in value:
                _choice(key, value[key], f"{spec_file}: {where} key '{name}.{key}'")
        if "skip" in value:
            out[name] = ModelConfig(name, name, skip_reason=value["skip"])
            continue
        fields = resolve(value["source"], root, cache_dir, at)
        fields.update({k: v for k, v in value.items() if k != "source"})  # revision, heads, text_prefix
        out[name] = ModelConfig(name, fields.pop("family", name), **fields)
    return out

