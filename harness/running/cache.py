"""What a run leaves on disk to be reused: cache keys, locked build-once directories, and tokenised data
(the finished records a later run resumes from: harness.results.resume).

Every cache entry is built under a file lock (`filelock`, i.e. `flock` on Linux: the kernel drops it when its
holder dies, so a killed worker never leaves a lock that blocks the others), in a temporary name that is renamed
into place, and carries a manifest of checksums that is verified before the entry is read. A half-written or
truncated entry is therefore never used: it is removed and built again.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from harness.fileio import OutputError

log = logging.getLogger(__name__)
MANIFEST = ".complete"  # written last, inside the temp dir: {relative path: [size, sha256]}
_verified: set = set()  # folder stamps (_stamp) already checked by this process


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (cache keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@contextmanager
def locked(path: Path, what: str):
    """Hold the lock `path` (created if missing). Says once that it waits when another process holds it.

    There is no timeout: a holder that dies releases the lock with its file descriptors, and a live holder is
    doing the work this process would otherwise repeat (an intermediate model of the `paper` profile takes hours).
    """
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another worker is building it", what)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _manifest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): [p.stat().st_size, file_digest(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _stamp(folder: Path) -> tuple:
    """Size and mtime of every file: a folder verified once is verified again only when one of them changes."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())


def is_complete(folder: Path) -> bool:
    """True when `folder` has its manifest and every file in it has the recorded size and checksum."""
    folder = Path(folder)
    try:
        stamp = _stamp(folder)
        if stamp in _verified:
            return True
        expected = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(expected, dict) or _manifest(folder) != expected:
        return False
    _verified.add(stamp)
    return True


def atomic_dir(target: Path, build) -> Path:
    """Build a directory once across processes: `build(tmp)` fills a temp dir that is renamed into place.

    Concurrent builders wait on the lock and then reuse the result. A folder whose manifest does not match its
    files (truncated, edited, left by an older version) is removed and rebuilt; so are temp dirs of killed builders.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_complete(target):
        return target
    with locked(target.with_name(target.name + ".lock"), target.name):
        if is_complete(target):
            return target
        if target.exists():
            log.warning("%s: incomplete or corrupt, building it again", target)
            shutil.rmtree(target)
        for stale in target.parent.glob(f".{target.name}-*"):  # temp dirs of killed builders (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f".{target.name}-{secrets.token_hex(6)}")
        try:
            tmp.mkdir(0o777)  # the umask applies (mkdtemp's 0700 would shut other users out of a shared cache)
            build(tmp)
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1, sort_keys=True))
            os.replace(tmp, target)
        except OSError as err:
            raise OutputError(f"{target}: not written ({err.strerror or err})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_dataclass(obj, path: Path) -> None:
    """Arrays and lists of 1-d arrays (ragged token ids) of a dataclass as one .npz."""
    arrays = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        elif isinstance(value, list):
            arrays[f"{f.name}.flat"] = np.concatenate(value) if value else np.zeros(0, np.int64)
            arrays[f"{f.name}.lengths"] = np.fromiter(map(len, value), np.int64, len(value))
        elif value is not None:
            raise TypeError(f"cannot cache field {f.name!r} of type {type(value).__name__}")
    np.savez(path, **arrays)


def _load_dataclass(cls, path: Path):
    with np.load(path) as z:
        values = {}
        for f in fields(cls):
            if f.name in z.files:
                values[f.name] = z[f.name]
            elif f"{f.name}.flat" in z.files:
                lengths = z[f"{f.name}.lengths"]
                values[f.name] = np.split(z[f"{f.name}.flat"], np.cumsum(lengths)[:-1]) if len(lengths) else []
            else:
                values[f.name] = None
    return cls(**values)


def tokenizer_digest(tokenizer) -> str:
    """The identity of a fast tokenizer: its serialised pipeline and padding side.

    Without the `truncation` and `padding` settings of the serialisation: every `tokenizer(..., max_length=...)`
    call changes them, so they say what ran before in this process, not what the tokenizer is."""
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    return fingerprint({k: v for k, v in pipeline.items() if k not in ("truncation", "padding")},
                       tokenizer.padding_side)


def cached_encoding(cache_dir: Path, tokenizer, split, max_length: int, labels, separate: bool = False):
    """`data.encode(...)` of a split, computed once per (tokenizer, split contents, length, labels, encoder code)
    and kept under cache_dir/encoded/ for every later cell, worker and run."""
    from harness.definitions import data as D

    content = fingerprint(split.texts, split.texts_b, split.labels)
    code = hashlib.sha256(inspect.getsource(D.encode).encode()).hexdigest()[:16]
    key = fingerprint("encoded", tokenizer_digest(tokenizer), content, max_length, labels, code,
                      *(["separate"] if separate else []))
    name = "-".join(Path(split.file).with_suffix("").parts[-3:])  # e.g. classification-general-en-train
    folder = atomic_dir(Path(cache_dir) / "encoded" / f"{name}-{key}",
                        lambda tmp: _save_dataclass(D.encode(tokenizer, split, max_length, labels, separate),
                                                    tmp / "encoded.npz"))
    return _load_dataclass(D.Encoded, folder / "encoded.npz")
