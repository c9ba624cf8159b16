"""The package's layers, enforced: a module imports only its own layer and the ones below, and no two modules
import each other, directly or round a circle (imports inside functions count too).

    fileio -> definitions -> training -> running -> results -> output -> top (pipeline, __main__, pytest)

The training engine (harness/training) knows nothing of cells or profiles: it never names Cell, Profile or
RunContext.

Data flows the same way: option -> profile -> cell -> record -> analysis -> summary.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
LAYERS = ("fileio", "definitions", "training", "running", "results", "output", "top")
TOP = ("pipeline", "__main__", "pytest")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    return LAYERS.index("top" if first in TOP else first) if first in LAYERS or first in TOP else -1


def imports(path: Path, modules: set[str]) -> set[str]:
    """The harness modules `path` imports anywhere in its code (`from harness.x import name` of a submodule
    `name` counts as importing that submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("harness.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found - {"harness"}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in graph() if m != "harness" and layer(m) < 0]
    assert not unplaced, f"modules outside the layers {LAYERS}: {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
                    for m, targets in graph().items() if m != "harness" for t in targets if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_only_the_pytest_layer_imports_pytest():
    offenders = [module_name(p) for p in PACKAGE.rglob("*.py") if not module_name(p).startswith("harness.pytest")
                 and any(isinstance(n, (ast.Import, ast.ImportFrom))
                         and ("pytest" in {a.name.split(".")[0] for a in n.names} if isinstance(n, ast.Import)
                              else (n.module or "").split(".")[0] in ("pytest", "_pytest", "xdist") and n.level == 0)
                         for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert not offenders, offenders


def test_the_checks_can_fail(tmp_path):
    """The walker sees a function-level import and a submodule imported by `from package import name`."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from harness.output import report\n    import harness.results.bootstrap\n")
    assert imports(src, {"harness.output.report"}) == {"harness.output.report", "harness.results.bootstrap"}
    assert layer("harness.output.report") > layer("harness.running.cell")
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


def names_imported(path: Path) -> set[str]:
    return {alias.name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_the_engine_knows_no_cell_or_profile():
    offenders = {module_name(p): sorted(names_imported(p) & {"Cell", "Profile", "RunContext"})
                 for p in (PACKAGE / "training").rglob("*.py")}
    assert not {m: n for m, n in offenders.items() if n}, offenders


def test_an_upward_import_into_training_is_caught(tmp_path, monkeypatch):
    """A planted `from harness.running.context import RunContext` in a training module fails both checks."""
    planted = tmp_path / "harness"
    for path in PACKAGE.rglob("*.py"):
        target = planted / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    loop = planted / "training" / "loop.py"
    loop.write_text(loop.read_text(encoding="utf-8") + "\n\ndef f():\n    from harness.running.context import RunContext\n",
                    encoding="utf-8")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", planted)
    with pytest.raises(AssertionError, match="harness.training.loop \\(training\\) imports harness.running.context"):
        test_no_module_imports_a_higher_layer()
    with pytest.raises(AssertionError, match="RunContext"):
        test_the_engine_knows_no_cell_or_profile()


def test_no_private_name_crosses_a_module_boundary():
    crossing = sorted(f"{module_name(p)} imports {node.module}.{alias.name}"
                      for p in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness")
                      for alias in node.names if alias.name.startswith("_"))
    assert not crossing, "\n".join(crossing)


def test_no_module_is_longer_than_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
