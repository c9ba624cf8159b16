"""Cell records: one JSON file per cell, written atomically; the run's store of records."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1
REQUIRED = ("cell", "profile", "model", "task", "domain", "seeds", "metrics", "gain", "intermediate_key",
            "timings", "env")


class RecordError(Exception):
    """A record that cannot be used; str() names the file."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder and rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_finite(obj, where: str):
    if isinstance(obj, float) and not math.isfinite(obj):
        raise RecordError(f"{where} is {obj}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_record(path: Path, record: dict) -> None:
    try:
        _check_finite(record["metrics"], "metrics")
        _check_finite(record["gain"], "gain")
    except RecordError as err:
        raise RecordError(f"{path}: not written, {err}") from None
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_record(path: Path) -> dict:
    """Load and check one record; any problem is a RecordError naming the file."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a cell record (a JSON object is expected)")
    if record.get("schema") != SCHEMA_VERSION:
        raise RecordError(f"{path}: schema version {record.get('schema')!r}, this harness reads {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{path}: field '{missing[0]}' missing")
    return record


def cells_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "cells"


def record_path(results_dir: Path, cell_id: str) -> Path:
    return cells_dir(results_dir) / f"{cell_id}.json"


def load_records(results_dir: Path) -> tuple[list[dict], list[str]]:
    """All readable records of a results directory, and one error line per unreadable one."""
    records, errors = [], []
    for path in sorted(cells_dir(results_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except RecordError as err:
            errors.append(str(err))
    return records, errors


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(device: str) -> dict:
    import datasets
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "device": device, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "git_commit": git_commit()}
