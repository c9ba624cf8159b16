"""The one atomic writer every output of the harness goes through (records, predictions, summaries, plot,
baselines, merge copies, cache entries): a temp file next to the target, fsync, rename; nothing half-written is
ever left under the target's name, and stale temp files of writers that are gone are removed."""
from __future__ import annotations

import io
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable


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

