"""Shared fixtures for the harness's own tests: offline settings, the tiny corpora, small data files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import CONTRACTS, PAIRS, write_jsonl, write_table

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
    from harness.training.tokenizers import load_tokenizer

    corpus = [tiny_profile.data_root / f for f in tiny_profile.tokenizer_corpus]
    cache = tmp_path_factory.mktemp("tokenizers")
    return {name: load_tokenizer(spec, corpus, cache) for name, spec in tiny_profile.models.items()}


@pytest.fixture
def jsonl(tmp_path):
    """`jsonl(name, rows)` writes a JSONL file under the test's tmp dir and returns its path."""
    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture
def table(tmp_path):
    """`table(name, header, rows, delimiter)` writes a CSV/TSV file under the test's tmp dir."""
    return lambda name, header, rows, delimiter=",": write_table(tmp_path / name, header, rows, delimiter)


@pytest.fixture
def data(tmp_path) -> Path:
    """A data folder for --spec tests: the contracts target (train, test, a German test split) and the sentence
    pairs as TSV (helpers.CONTRACTS, helpers.PAIRS)."""
    root = tmp_path / "data"
    write_jsonl(root / "contracts" / "train.jsonl", CONTRACTS)
    write_jsonl(root / "contracts" / "test.jsonl", CONTRACTS[:4])
    write_jsonl(root / "contracts-de" / "test.jsonl", CONTRACTS[4:])
    write_table(root / "pairs" / "train.tsv", ["a", "b", "sim"], [list(r.values()) for r in PAIRS], "\t")
    write_table(root / "pairs" / "test.tsv", ["a", "b", "sim"], [list(r.values()) for r in PAIRS[:3]], "\t")
    return root
