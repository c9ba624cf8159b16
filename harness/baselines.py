"""Baselines: a profile's recorded results (baselines/<profile>.json) and the regression check against them.

File format (schema 1), keys sorted so diffs are readable:
    {"schema": 1, "profile": "tiny", "cells": {CELL_ID: ENTRY, ...}}
An ENTRY is the subset `FIELDS` of the cell record, with the record's meanings, so tools can read a baseline
file as a set of records.

The check (`compare`) fails a cell when, in any language of the baseline,
- the gain's verdict differs from the baseline's, or
- the main metric of an arm falls below the baseline by more than `tolerance`: three standard errors of the
  difference between two means over the baseline's seeds, sqrt(2) * sd / sqrt(seeds) with sd the spread of
  the baseline's per-seed values (the new run is assumed as noisy as the baseline), and never less than
  FLOOR, which is what is left when one seed gives no spread or every seed agrees.
A rise is never a failure: record it with --update-baselines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from filelock import FileLock
from tabulate import tabulate

from harness.grid import ARMS
from harness.record import SCHEMA_VERSION, atomic_write_text, gain_text

FIELDS = ("main_metric", "languages", "seeds", "model", "config_key", "metrics", "metrics_per_seed", "gain", "env")
FLOOR = 0.02
STANDARD_ERRORS = 3.0


class BaselineError(Exception):
    """A baseline file that cannot be used (unreadable, corrupt, another profile); str() names the file."""


def baseline_path(folder, profile: str) -> Path:
    return Path(folder) / f"{profile}.json"


def read_file(path: Path) -> dict:
    """The parsed baseline file (JSON object with 'cells', this schema version), of any profile.
    Raises BaselineError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BaselineError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise BaselineError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise BaselineError(f"{path}: not a baseline file (a JSON object with 'cells' is expected)")
    if data.get("schema") != SCHEMA_VERSION:
        raise BaselineError(f"{path}: schema version {data.get('schema')!r}, this harness reads {SCHEMA_VERSION}")
    return data


def load(path: Path, profile: str) -> dict:
    """The baseline entries by cell id of `profile`; {} when the file does not exist. Raises BaselineError."""
    path = Path(path)
    if not path.exists():
        return {}
    data = read_file(path)
    if data.get("profile") != profile:
        raise BaselineError(f"{path}: baselines of profile {data.get('profile')!r}, this run uses {profile!r}")
    for cell_id, entry in data["cells"].items():
        missing = [f for f in FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise BaselineError(f"{path}: cell '{cell_id}' field '{missing[0]}' missing")
    return data["cells"]


def entry(record: dict) -> dict:
    return {k: record[k] for k in FIELDS}


def update(path: Path, profile: str, records: list[dict]) -> None:
    """Record these cells (replacing their old entries, keeping every other cell), atomically.

    The file lock serialises concurrent updates (e.g. shards of one grid); an unusable existing file raises
    BaselineError and is left as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        cells = load(path, profile)
        cells.update({r["cell"]: entry(r) for r in records})
        text = json.dumps({"schema": SCHEMA_VERSION, "profile": profile, "cells": cells}, indent=1, sort_keys=True)
        atomic_write_text(path, text + "\n")


def tolerance(per_seed: list[float]) -> float:
    """How far a main metric may fall below its baseline mean (see the module docstring)."""
    if len(per_seed) < 2:
        return FLOOR
    spread = float(np.std(per_seed, ddof=1))
    return max(FLOOR, STANDARD_ERRORS * math.sqrt(2) * spread / math.sqrt(len(per_seed)))


def changes(record: dict, base: dict) -> list[list]:
    """One row per failed comparison: language, what, baseline, now, allowed."""
    rows, main = [], base["main_metric"]
    for lang in base["languages"]:
        if lang not in record["gain"]:
            rows.append([lang, "language", "present", "missing", ""])
            continue
        old, new = base["gain"][lang], record["gain"][lang]
        if old["verdict"] != new["verdict"]:
            rows.append([lang, "gain verdict", gain_text(old), gain_text(new), "same verdict"])
        for arm in ARMS:
            was, now = base["metrics"][arm][lang][main], record["metrics"][arm][lang][main]
            allowed = tolerance(base["metrics_per_seed"][arm][lang][main])
            if now < was - allowed:
                rows.append([lang, f"{arm} {main}", f"{was:.3f}", f"{now:.3f} ({now - was:+.3f})", f">= -{allowed:.3f}"])
    return rows


def check(record: dict, cells: dict, path: Path) -> tuple[str, str]:
    """(status, message) of a cell against the baselines `cells` read from `path`.

    status: `ok`; `changed` (a regression; the message is a table of what changed); `new` (no baseline for the
    cell); `mismatch` (a baseline recorded with other seeds, which cannot be compared).
    """
    cell = record["cell"]
    base = cells.get(cell)
    if base is None:
        return "new", f"{cell}: no baseline in {path}; record one with --update-baselines"
    if base["seeds"] != record["seeds"]:
        return "mismatch", (f"{cell}: the baseline in {path} has seeds {base['seeds']}, this run {record['seeds']}; "
                            f"not compared (run with --seeds {len(base['seeds'])} or record with --update-baselines)")
    rows = changes(record, base)
    if not rows:
        return "ok", f"{cell}: as recorded in {path}"
    table = tabulate(rows, headers=["lang", "what", "baseline", "now", "allowed"])
    return "changed", f"{cell}: differs from {path}\n{table}"
