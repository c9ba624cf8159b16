"""Shared fixtures for the harness's own tests: offline settings, the tiny corpora, small data files."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before anything imports transformers / datasets: the tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread per test process: on a shared 2-core machine (and under -n 2) more threads make
    tiny models many times slower through contention, not faster."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory) -> Path:
    """The generated tiny corpora (fixtures/generate.py), once per session (per xdist worker)."""
    from fixtures.generate import ensure_corpora

    return ensure_corpora(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def tiny_profile(tiny_corpora, tmp_path_factory):
    """The `tiny` profile over the session's corpora, with its own cache directory."""
    from harness.definitions.profiles import tiny

    return tiny(tiny_corpora, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_tokenizers(tiny_profile, tmp_path_factory) -> dict:
    """One trained tokenizer per model family of the tiny profile (trained once per session)."""
    from harness.running.models import load_tokenizer

    corpus = [tiny_profile.data_root / f for f in tiny_profile.tokenizer_corpus]
    cache = tmp_path_factory.mktemp("tokenizers")
    return {name: load_tokenizer(spec, corpus, cache) for name, spec in tiny_profile.models.items()}


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


@pytest.fixture
def jsonl(tmp_path):
    """`jsonl(name, rows)` writes a JSONL file under the test's tmp dir and returns its path."""
    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture
def table(tmp_path):
    """`table(name, header, rows, delimiter)` writes a CSV/TSV file under the test's tmp dir."""
    return lambda name, header, rows, delimiter=",": write_table(tmp_path / name, header, rows, delimiter)


REPO = Path(__file__).resolve().parent.parent


def run_pytest(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pytest ARGS` in the repository root, in a clean process: the variables by which an outer
    pytest or xdist worker announces itself are dropped, so the inner run behaves as a user's would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def inner_pytest():
    """`inner_pytest(*args, timeout=...)` runs pytest in a subprocess (see run_pytest)."""
    return run_pytest
