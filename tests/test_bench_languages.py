"""bench/languages.py: two runs' gains side by side per cell and language, read at the first K seeds."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from recordgen import make_record, with_floor, write_records

from harness.results.record import save_predictions

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_languages", BENCH / "languages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(results_dir: Path, model: str, cells, better: float, seeds: int = 4) -> None:
    """Records and 4-class predictions of `seeds` seeds: the intermediate arm right on `better` more of the rows."""
    rng = np.random.default_rng(len(model))
    for task, domain in cells:
        record = with_floor(make_record(model, task, domain, languages=("en", "de"), seeds=seeds))
        write_records(results_dir, [record])
        arrays = {}
        for lang in ("en", "de"):
            y = rng.integers(0, 4, 300)
            arrays[f"y_true/{lang}"] = y
            for arm, right in (("direct", 0.5), ("intermediate", 0.5 + better)):
                arrays[f"{arm}/{lang}"] = np.where(rng.random((seeds, 300)) < right, y, (y + 1) % 4)
        save_predictions(results_dir, record["cell"], arrays)


def test_two_runs_side_by_side_with_the_target_language_first_and_a_cell_of_one_run_dashed(tmp_path):
    languages = _module()
    _run(tmp_path / "a", "e5", [("classification", "general"), ("classification", "legal")], better=0.4)
    _run(tmp_path / "b", "bert", [("classification", "general")], better=0.0)
    table = languages.rows(tmp_path / "a", 3) + languages.rows(tmp_path / "b", 3)
    names, a, b = languages.split(table, ["e5", "bert"])
    assert names == ("e5", "bert") and languages.split(table, None)[0] == names
    assert {t["seeds"] for t in a} == {4} and len(a) == 4 and len(b) == 2
    with pytest.raises(SystemExit, match="two model rows needed, found e5, bert"):
        languages.split(table, ["e5", "xlnet"])
    text = languages.markdown(a, b, 3, ("e5", "MiniLM"))
    lines = text.splitlines()
    assert lines[0].startswith("| cell | lang | rows | e5 floor |") and "MiniLM gain, 3 seeds [95%]" in lines[0]
    general = [line for line in lines if line.startswith("| classification-general |")]
    assert [line.split(" | ")[1] for line in general] == ["**en**", "de"]
    legal = [line for line in lines if line.startswith("| classification-legal |")]
    assert len(legal) == 2 and all(line.rstrip(" |").endswith("- | - | -") for line in legal)
    # a 0.4 better arm on 300 rows is decided positive at 3 seeds; an equal one is not positive
    assert all("positive" in line.split(" | ")[5] for line in general + legal)
    assert not any("positive" in line.split(" | ")[8] for line in general)
    assert "- e5, target language: 2 of 2 gains decided at 3 seeds (positive 2)" in lines
    assert "- e5, zero-shot: 2 of 2 gains decided at 3 seeds (positive 2)" in lines
    assert any(line.startswith("- MiniLM, zero-shot: ") for line in lines)


def test_the_direct_column_is_the_mean_of_the_first_k_seeds_not_of_the_whole_record(tmp_path):
    languages = _module()
    _run(tmp_path / "a", "e5", [("classification", "general")], better=0.0)
    path = next((tmp_path / "a" / "cells").glob("*.json"))
    record = json.loads(path.read_text())
    main = record["main_metric"]
    record["metrics_per_seed"]["direct"]["en"][main] = [0.5, 0.6, 0.7, 0.9]  # the record's mean would be 0.675
    path.write_text(json.dumps(record))
    (en,) = [t for t in languages.rows(tmp_path / "a", 3) if t["language"] == "en"]
    assert en["direct"] == pytest.approx(0.6)
    assert next(t for t in languages.rows(tmp_path / "a", 4) if t["language"] == "en")["direct"] == pytest.approx(0.675)
