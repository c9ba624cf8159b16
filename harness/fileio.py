"""The one atomic writer every output of the harness goes through (records, predictions, summaries, plot,
baselines, merge copies, cache entries): a temp file next to the target, fsync, rename; nothing half-written is
ever left under the target's name, and stale temp files of writers that are gone are removed; and the build-once
folders of the caches (atomic_dir: locked, renamed into place, verified by a checksum manifest)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


class OutputError(OSError):
    """An output that could not be written (full disk, no permission); str() names the file. Nothing is left."""


# ---------------------------------------------------------------- the atomic writer

_TEMP = ".tmp-"  # temp files are `.NAME.tmp-HOST-PID-RANDOM` next to NAME
STALE_AFTER_S = 24 * 3600  # a temp file of another machine this old belongs to a run that is gone


def atomic_write(path: Path, fill: Callable[[io.BufferedWriter], Any]) -> Path:
    """Write `path` through `fill(binary file)`: a temp file in the same folder, fsync, rename.

    Readers see the old file or the new one, never a part. On any error (full disk, no permission, Ctrl-C) the
    temp file is removed and the old file is kept; an OSError becomes an OutputError naming `path`. Files get
    the usual mode for the umask (0644 for umask 022), like files of ordinary tools. After a successful write,
    temp files that killed writers left for the same path are removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TEMP}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise OutputError(f"{path}: not written ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"{path}: not written ({err.strerror or err})") from None
        raise
    _fsync_dir(path.parent)
    remove_stale_temps(path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _writer_gone(name: str, prefix: str) -> bool:
    try:
        host, pid, _ = name[len(prefix):].rsplit("-", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of `path` whose writer is dead (same machine) or that are older than STALE_AFTER_S."""
    path = Path(path)
    prefix = f".{path.name}{_TEMP}"
    removed = []
    for tmp in path.parent.glob(f"{prefix}*"):
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_AFTER_S
            if old or _writer_gone(tmp.name, prefix):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


# Build-once folders: cache keys, file locks and atomic directories with a checksum manifest (the caches of
# harness.running.cache and harness.training.tokenizers live in them).
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
