"""What a run leaves on disk to be reused: tokenised data and the tokenizer digest of cache keys (the locked
build-once directories they live in: harness.fileio.atomic_dir; the finished records a later run resumes from:
harness.results.resume).

Every cache entry is built under a file lock (`filelock`, i.e. `flock` on Linux: the kernel drops it when its
holder dies, so a killed worker never leaves a lock that blocks the others), in a temporary name that is renamed
into place, and carries a manifest of checksums that is verified before the entry is read. A half-written or
truncated entry is therefore never used: it is removed and built again.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from harness.fileio import atomic_dir, fingerprint


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
