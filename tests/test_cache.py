"""Build-once cache entries (harness/fileio.py, harness/running/cache.py): locks, atomic directories, checksums, tokenised data, resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock, Timeout

from harness import fileio
from harness.fileio import atomic_dir, fingerprint, is_complete
from harness.results.resume import finished_record
from harness.running import cache
from harness.running.cache import cached_encoding

ROOT = Path(__file__).resolve().parents[1]


def _builder(calls: list, text: str = "weights"):
    def build(tmp: Path):
        calls.append(tmp)
        (tmp / "body.bin").write_text(text)
        (tmp / "meta.json").write_text(json.dumps({"n": len(calls)}))
    return build


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint("a", {"x": 1, "y": [1, 2]}) == fingerprint("a", {"y": [1, 2], "x": 1})
    assert fingerprint("a", 1) != fingerprint("a", 2)


def test_atomic_dir_builds_once_and_leaves_no_temp_dir(tmp_path):
    calls = []
    target = tmp_path / "model"
    assert atomic_dir(target, _builder(calls)) == target
    assert atomic_dir(target, _builder(calls)) == target
    assert len(calls) == 1 and not calls[0].exists()
    assert (target / "body.bin").read_text() == "weights"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path):
    def broken(tmp):
        (tmp / "body.bin").write_text("half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        atomic_dir(tmp_path / "model", broken)
    assert not (tmp_path / "model").exists()
    calls = []
    atomic_dir(tmp_path / "model", _builder(calls))
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_a_truncated_or_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    calls = []
    target = atomic_dir(tmp_path / "model", _builder(calls, "x" * 1000))
    assert is_complete(target)
    if damage == "truncate":
        with open(target / "body.bin", "r+") as f:
            f.truncate(10)
    elif damage == "delete":
        (target / "meta.json").unlink()
    else:
        (target / fileio.MANIFEST).write_text("ok\n")  # the marker of an older version: no checksums
    assert not is_complete(target)
    atomic_dir(target, _builder(calls, "x" * 1000))
    assert len(calls) == 2 and is_complete(target)
    assert (target / "body.bin").read_text() == "x" * 1000


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True, **kwargs)


def _wait_for_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    assert line == expected, f"subprocess said {line!r}"


@pytest.mark.subprocess
def test_lock_of_a_killed_holder_is_released(tmp_path):
    """flock locks die with their process: after SIGKILL the lock file is still there but free."""
    lock = tmp_path / "x.lock"
    holder = _python(f"from harness.fileio import locked\nimport time\nwith locked({str(lock)!r}, 'x'):\n"
                     f"    print('held', flush=True)\n    time.sleep(600)\n")
    try:
        _wait_for_line(holder, "held")
        with pytest.raises(Timeout):
            FileLock(str(lock)).acquire(timeout=0.2)  # really held while the holder lives
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.exists()
    with FileLock(str(lock)).acquire(timeout=10):
        pass


@pytest.mark.subprocess
def test_a_builder_killed_mid_build_leaves_no_block_and_no_half_entry(tmp_path):
    target = tmp_path / "model"
    builder = _python(
        "from pathlib import Path\nimport time\nfrom harness.fileio import atomic_dir\n"
        "def build(tmp):\n    (tmp / 'body.bin').write_text('half')\n    print('building', flush=True)\n"
        f"    time.sleep(600)\natomic_dir(Path({str(target)!r}), build)\n")
    try:
        _wait_for_line(builder, "building")
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    assert not target.exists() and any(p.name.startswith(".model-") for p in tmp_path.iterdir())
    calls = []
    started = time.monotonic()
    atomic_dir(target, _builder(calls))
    assert time.monotonic() - started < 30 and len(calls) == 1
    assert (target / "body.bin").read_text() == "weights"
    assert not any(p.name.startswith(".model-") for p in tmp_path.iterdir())  # the killed builder's temp dir


@pytest.mark.subprocess
def test_concurrent_builders_build_once(tmp_path):
    """Three processes race for one entry: one builds (slowly), the others wait and reuse it."""
    target, log = tmp_path / "model", tmp_path / "builds.log"
    code = ("from pathlib import Path\nimport os, time\nfrom harness.fileio import atomic_dir\n"
            "def build(tmp):\n"
            f"    with open({str(log)!r}, 'a') as f: f.write(str(os.getpid()) + '\\n')\n"
            "    time.sleep(1.0)\n    (tmp / 'body.bin').write_text('weights')\n"
            f"atomic_dir(Path({str(target)!r}), build)\nprint((Path({str(target)!r}) / 'body.bin').read_text())\n")
    procs = [_python(code) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outputs == ["weights"] * 3
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.parametrize("family", ["bert", "roberta"])  # roberta has no token type ids
def test_cached_encoding_equals_encode_and_is_computed_once(tmp_path, tiny_profile, tiny_tokenizers, family,
                                                           monkeypatch):
    from harness.definitions import data as D
    from harness.definitions.tasks import task_type

    spec = tiny_profile.targets[("classification", "general")]
    split = D.load_split(spec, tiny_profile.data_root, "train", limit=50)
    labels = task_type("classification").label_set(split.labels)
    tok = tiny_tokenizers[family]
    expected = D.encode(tok, split, 32, labels)
    calls = []

    def counting_encode(*args):
        calls.append(args)
        return expected

    monkeypatch.setattr(D, "encode", counting_encode)
    first = cached_encoding(tmp_path, tok, split, 32, labels)
    second = cached_encoding(tmp_path, tok, split, 32, labels)
    assert len(calls) == 1
    for got in (first, second):
        assert len(got) == len(expected)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got.input_ids, expected.input_ids))
        assert (got.token_type_ids is None) == (expected.token_type_ids is None)
        if expected.token_type_ids is not None:
            assert all(np.array_equal(a, b) for a, b in zip(got.token_type_ids, expected.token_type_ids))
        assert np.array_equal(got.targets, expected.targets)
    cached_encoding(tmp_path, tok, split, 16, labels)  # another length is another entry
    assert len(calls) == 2


def _record(tmp_path: Path, key: str = "k1") -> Path:
    from recordgen import make_record

    from harness.results.record import record_path, save_predictions, write_record

    record = {**make_record("bert", "sentiment", "legal"), "config_key": key}
    path = record_path(tmp_path, record["cell"])
    write_record(path, record)
    save_predictions(tmp_path, record["cell"], {"y_true/en": np.arange(3)})
    return path


def test_finished_record_is_reused_only_for_the_same_configuration(tmp_path):
    path = _record(tmp_path)
    assert finished_record(path, "k1")["cell"] == "bert-sentiment-legal"
    assert finished_record(path, "k2") is None
    assert finished_record(tmp_path / "cells" / "missing.json", "k1") is None


@pytest.mark.parametrize("damage", ["truncate record", "truncate predictions", "delete predictions"])
def test_a_truncated_record_or_predictions_file_is_not_reused(tmp_path, damage):
    path = _record(tmp_path)
    predictions = tmp_path / "predictions" / "bert-sentiment-legal.npz"
    if damage == "truncate record":
        path.write_text(path.read_text()[:40])
    elif damage == "truncate predictions":
        predictions.write_bytes(predictions.read_bytes()[:30])
    else:
        predictions.unlink()
    assert finished_record(path, "k1") is None


@pytest.mark.parametrize("family", ["bert", "roberta", "xlnet"])
def test_tokenizer_digest_is_a_function_of_the_tokenizer_only(tiny_profile, tiny_tokenizers, family, tmp_path):
    """Encoding sets truncation and padding state inside the tokenizer; a freshly loaded copy of the same
    tokenizer and one that encoded at two lengths before have the same digest (cache keys stay pure)."""
    from transformers import AutoTokenizer

    used = tiny_tokenizers[family]
    used.save_pretrained(tmp_path)
    fresh = AutoTokenizer.from_pretrained(str(tmp_path))
    used(["a b c d e f g", "h i"], truncation=True, max_length=3)
    used(["a b", "c d"], ["e", "f"], truncation=True, max_length=17, padding="max_length")
    assert json.loads(used.backend_tokenizer.to_str())["truncation"] != \
        json.loads(fresh.backend_tokenizer.to_str())["truncation"]  # the state the digest must not see
    assert cache.tokenizer_digest(used) == cache.tokenizer_digest(fresh)
