"""Plain helpers for the harness's own tests (their fixtures live in tests/conftest.py): subprocesses with one
environment rule, the micro grid in a subprocess, the records of a results folder, the real-data skip marker,
small data files. `from helpers import ...` works because pytest puts tests/ on sys.path for its conftest.py."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.definitions.config import TrainConfig
from harness.definitions.data import Split

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
SHARED_DATA = REPO.parent / "shared" / "data"

needs_shared_data = pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.md").is_file(),
                                       reason=f"no real data at {SHARED_DATA}")

# small --spec data sets: a classification target in a new domain, sentence pairs with scores
CONTRACTS = [{"text": f"clause number {i} about payment", "label": ["fair", "unfair"][i % 2]} for i in range(8)]
PAIRS = [{"a": f"sentence {i}", "b": f"another sentence {i}", "sim": i / 2} for i in range(6)]

# the recipe of the toy training runs (tests/test_train.py, tests/test_lpft.py)
TOY = TrainConfig(lr=2e-3, epochs=8, batch_size=16, max_length=16, warmup_ratio=0.1)


def subprocess_env(env: dict | None = None) -> dict:
    """The environment of every subprocess a test starts: this one without the variables by which an outer
    pytest or xdist worker announces itself (`PYTEST_*`, e.g. PYTEST_XDIST_WORKER, which the harness reads to
    think it is a worker, and `COV_*`), offline, tokenizers single-threaded; then the extra variables `env`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    out.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out.update(env or {})
    return out


def run_pytest(*args: str, timeout: float = 600, env: dict | None = None,
               cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m pytest ARGS` in the repository root (or `cwd`) under subprocess_env(env), output captured.
    Pass options as `--opt=value` where the value is a path outside the repository: a bare path argument takes
    part in pytest's choice of rootdir."""
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=subprocess_env(env),
                          capture_output=True, text=True, timeout=timeout)


def run_harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` (report, compare, merge) in the repository root under subprocess_env()."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


# the test-only profiles (pytest plugins in tests/) and the plugin that registers each
PROFILE_PLUGINS = {"micro": "micro_profile", "regress": "regression_profile"}


def grid_command(results_dir: Path, cache_dir: Path, *args: str, profile: str = "micro",
                 paths: tuple = ("bench",), seeds: str | None = "1") -> tuple[list[str], dict]:
    """argv and environment of `pytest bench` on a test profile (tests/micro_profile.py by default: one seed,
    cells in seconds) in a subprocess; `seeds=None` leaves --seeds to the ini file."""
    argv = [sys.executable, "-m", "pytest", "-p", PROFILE_PLUGINS[profile], "-p", "no:cacheprovider",
            "-p", "no:hypothesispytest", *paths, "--profile", profile, *(["--seeds", seeds] if seeds else []),
            "--results-dir", str(results_dir), "--cache-dir", str(cache_dir), *args]
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return argv, subprocess_env({"PYTHONPATH": pythonpath})


def grid_run(folder: Path, *args: str, cache: Path | None = None, timeout: float = 900,
             **command) -> subprocess.CompletedProcess:
    """Run the grid (grid_command) in the repository root with results in folder/results and the cache in
    folder/cache (or `cache`); output captured."""
    argv, env = grid_command(folder / "results", cache or folder / "cache", *args, **command)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def records(results_dir: Path) -> dict:
    """cell id -> record of every cell record in a results folder (none of them may fail to load)."""
    from harness.results.record import load_records

    found, errors = load_records(Path(results_dir))
    assert errors == []
    return {r["cell"]: r for r in found}


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or strings (written verbatim, for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_table(path: Path, header: list, rows: list, delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def target_entry(**changes) -> dict:
    """A --spec [[dataset]] entry: the contracts target (tests/conftest.py's `data` fixture), with changes."""
    entry = dict(name="contracts", task="classification", domain="finance", path="contracts")
    entry.update(changes)
    return entry


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def write_spec(path: Path, *entries: dict, extra: str = "") -> Path:
    """A --spec file of these [[dataset]] entries, then the TOML text `extra`."""
    blocks = ["[[dataset]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in e.items()) for e in entries]
    path.write_text("\n".join(blocks) + extra, encoding="utf-8")
    return path


def spec_error(profile, spec: Path, data_dir) -> str:
    """The SpecError of applying `spec` to `profile`, checked to be one line that starts with the file."""
    from harness.definitions.specfile import SpecError, apply_spec

    with pytest.raises(SpecError) as info:
        apply_spec(profile, spec, data_dir)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(spec))
    return message


def toy_split(n: int = 96, seed: int = 0) -> Split:
    """Label `a` when the cue word `ba` occurs, `b` when `mo` does; the rest is shared filler."""
    rng = np.random.default_rng(seed)
    filler = ["ti", "ke", "so", "pe", "ra", "lo", "nu", "di"]
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(filler, size=rng.integers(2, 7)))
        words.insert(int(rng.integers(0, len(words) + 1)), "ba" if i % 2 else "mo")
        texts.append(" ".join(words))
        labels.append("a" if i % 2 else "b")
    return Split("toy", texts, None, labels)
