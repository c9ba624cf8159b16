"""Baseline files and the regression check (harness/results/baselines.py), on synthetic records."""
from __future__ import annotations

import copy
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recordgen import make_record

from harness.results import baselines
from harness.results.baselines import FIELDS, BaselineError
from harness.results.change import cell_level


def _file(tmp_path, records, profile="tiny"):
    path = baselines.baseline_path(tmp_path / "baselines", profile)
    baselines.update(path, profile, records)
    return path


def _on(record, device="cuda:0", precision="bf16"):
    out = copy.deepcopy(record)
    out["env"].update(device=device, precision=precision)
    return out


def _with_seeds(record, seeds, spread):
    """The record as if run on `seeds`, its per-seed gains spread by +-spread around the same mean."""
    out = copy.deepcopy(record)
    out["seeds"] = list(seeds)
    for g in out["gain"].values():
        g["per_seed"] = [g["mean"] - spread, g["mean"], g["mean"] + spread]
    return out


def _check(record, base_record, tmp_path, margin=baselines.MARGIN):
    cells = {base_record["cell"]: {baselines.entry_key(base_record): baselines.entry(base_record)}}
    return baselines.check(record, cells, tmp_path / "tiny.json", margin)


def test_update_records_the_given_cells_and_keeps_the_others(tmp_path):
    a, b = make_record("bert", "sentiment", "general"), make_record("xlnet", "similarity", "legal")
    path = _file(tmp_path, [a, b])
    rerun = make_record("bert", "sentiment", "general", shift=0.25)
    baselines.update(path, "tiny", [rerun])
    cells = baselines.load(path, "tiny")
    assert cells == {a["cell"]: {"cpu-fp32": baselines.entry(rerun)}, b["cell"]: {"cpu-fp32": baselines.entry(b)}}
    assert set(cells[a["cell"]]["cpu-fp32"]) == set(FIELDS) | {"device", "precision"}


def test_a_gpu_update_adds_an_entry_beside_the_cpu_one(tmp_path):
    cpu = make_record("bert", "sentiment", "general")
    path = _file(tmp_path, [cpu])
    gpu = _on(make_record("bert", "sentiment", "general", shift=0.25))
    baselines.update(path, "tiny", [gpu])
    entries = baselines.load(path, "tiny")[cpu["cell"]]
    assert sorted(entries) == ["cpu-fp32", "cuda-bf16"]
    assert entries["cpu-fp32"] == baselines.entry(cpu) and entries["cuda-bf16"]["gain"] == gpu["gain"]
    assert (entries["cuda-bf16"]["device"], entries["cuda-bf16"]["precision"]) == ("cuda", "bf16")


def test_a_check_uses_the_entry_of_its_precision_else_the_other_with_a_note(tmp_path):
    cpu, gpu = make_record("bert", "sentiment", "general"), _on(make_record("bert", "sentiment", "general", shift=0.3))
    entries = {"cpu-fp32": baselines.entry(cpu), "cuda-bf16": baselines.entry(gpu)}
    assert baselines.pick(entries, gpu) == (entries["cuda-bf16"], None)
    assert baselines.pick(entries, cpu) == (entries["cpu-fp32"], None)
    assert baselines.pick(entries, _on(cpu, "cuda:1", "fp32")) == (entries["cpu-fp32"], None)  # same precision
    entry, note = baselines.pick({"cpu-fp32": entries["cpu-fp32"]}, gpu)
    assert entry is entries["cpu-fp32"] and note == "no bf16 baseline, checked against the cpu fp32 one"
    result = baselines.check(gpu, {gpu["cell"]: {"cpu-fp32": entries["cpu-fp32"]}}, tmp_path / "tiny.json")
    assert result.note == note


def test_baseline_file_is_sorted_and_complete(tmp_path):
    path = _file(tmp_path, [make_record("xlnet", "sentiment", "medical"), make_record("bert", "sentiment", "legal")])
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, indent=1, sort_keys=True) + "\n"
    assert (data["schema"], data["profile"], list(data["cells"])) == \
        (2, "tiny", ["bert-sentiment-legal", "xlnet-sentiment-medical"])
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny.json.lock", "tiny.json"]  # no temp files


def test_the_shipped_tiny_baseline_is_usable():
    cells = baselines.load(baselines.baseline_path("baselines", "tiny"), "tiny")
    assert len(cells) == 27 and all(list(e) == ["cpu-fp32"] for e in cells.values())


@pytest.mark.parametrize("content, message", [
    ('{"schema": 2, "profile": "tiny", "cells": {', "not valid JSON (line 1"),
    ("[1, 2]", "not a baseline file"),
    ('{"schema": 1, "profile": "tiny", "cells": {}}', "baseline format 1 lacks the per-seed gains"),
    ('{"schema": 7, "profile": "tiny", "cells": {}}', "baseline format 7"),
    ('{"schema": 2, "profile": "minilm", "cells": {}}', "baselines of profile 'minilm', this run uses 'tiny'"),
    ('{"schema": 2, "profile": "tiny", "cells": {"bert-sentiment-general": {}}}',
     "cell 'bert-sentiment-general' holds no entries"),
    ('{"schema": 2, "profile": "tiny", "cells": {"bert-sentiment-general": {"cpu-fp32": {"gain": {}}}}}',
     "cell 'bert-sentiment-general' entry 'cpu-fp32' field 'main_metric' missing"),
])
def test_unusable_file_is_a_one_line_error_naming_it_and_is_never_overwritten(tmp_path, content, message):
    path = tmp_path / "tiny.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BaselineError, match=re.escape(message)) as err:
        baselines.load(path, "tiny")
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    with pytest.raises(BaselineError):
        baselines.update(path, "tiny", [make_record("bert", "sentiment", "general")])
    assert path.read_text(encoding="utf-8") == content


def test_an_entry_without_the_test_set_standard_error_is_named(tmp_path):
    path = _file(tmp_path, [make_record("bert", "sentiment", "general")])
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["cells"]["bert-sentiment-general"]["cpu-fp32"]["gain"]["de"]["se_boot"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BaselineError, match=re.escape("entry 'cpu-fp32' field 'gain.de.se_boot' missing")):
        baselines.load(path, "tiny")


def test_missing_file_holds_no_baselines(tmp_path):
    assert baselines.load(tmp_path / "tiny.json", "tiny") == {}


@given(st.sampled_from(["classification", "similarity"]), st.integers(1, 3))
@settings(max_examples=20)
def test_a_record_passes_against_itself(tmp_path_factory, task, seeds):
    base = make_record("roberta", task, "medical", seeds=seeds)
    result = _check(base, base, tmp_path_factory.getbasetemp())
    assert (result.status, result.moved, result.note) == ("ok", [], None)


def test_other_seeds_are_compared(tmp_path):
    base = _with_seeds(make_record("bert", "sentiment", "legal", seeds=3), [0, 1, 2], 0.02)
    other = _with_seeds(make_record("bert", "sentiment", "legal", seeds=3), [3, 4, 5], 0.03)
    assert _check(other, base, tmp_path).status == "ok"
    assert _check(_with_seeds(make_record("bert", "sentiment", "legal", seeds=3, shift=0.3), [3, 4, 5], 0.03), base,
                  tmp_path).status == "changed"


def test_a_significant_change_beyond_the_margin_fails_with_a_table(tmp_path):
    base = make_record("bert", "classification", "general", seeds=3)
    moved = make_record("bert", "classification", "general", seeds=3, shift=0.25)
    result = _check(moved, base, tmp_path)
    assert result.status == "changed"
    lines = result.message.splitlines()
    assert lines[0] == f"bert-classification-general: differs from {tmp_path / 'tiny.json'} (margin 0.02)"
    assert lines[1].split() == ["lang", "what", "baseline", "now", "change", "[interval]", "outcome"]
    assert {tuple(x.split()[:2]) for x in lines[3:]} >= {("en", "gain"), ("en", "intermediate")}
    assert all(x.endswith(("significant change", "verdict reversed")) for x in lines[3:])
    wide = _check(moved, base, tmp_path, margin=0.3)  # the margin: smaller changes never fail, reversals still do
    assert all(x.endswith("verdict reversed") for x in wide.message.splitlines()[3:])


def test_a_change_within_its_interval_passes(tmp_path):
    base = make_record("bert", "classification", "general", seeds=3)
    record = copy.deepcopy(base)
    for g in record["gain"].values():
        g["mean"] += g["se_boot"]  # one standard error
    assert _check(record, base, tmp_path).status == "ok"


def test_a_reversed_verdict_fails_even_without_a_significant_change(tmp_path):
    base = make_record("xlnet", "similarity", "legal")
    record = copy.deepcopy(base)
    old = base["gain"]["en"]
    record["gain"]["en"].update(verdict="negative" if old["verdict"] == "positive" else "positive")
    result = _check(record, base, tmp_path)
    assert result.status == "changed" and "verdict reversed" in result.message


@pytest.mark.parametrize("before, after, outcome", [
    ("inconclusive", "positive", "strengthened"), ("positive", "inconclusive", "weakened"),
    ("inconclusive", "equivalent", "strengthened"), ("equivalent", "inconclusive", "weakened"),
    ("equivalent", "negative", "strengthened"), ("positive", "equivalent", "weakened")])
def test_a_verdict_that_moves_without_a_significant_change_is_reported_not_failed(tmp_path, before, after, outcome):
    base = make_record("bert", "sentiment", "legal", seeds=3)
    lang = next(iter(base["gain"]))
    base["gain"][lang]["verdict"] = before
    record = copy.deepcopy(base)
    record["gain"][lang]["verdict"] = after
    result = _check(record, base, tmp_path)
    assert result.status == "ok"
    assert [m[:3] for m in result.moved] == [["bert-sentiment-legal", lang, outcome]]


def test_a_baseline_file_that_still_says_neutral_reads_it_as_inconclusive(tmp_path):
    record = make_record("bert", "sentiment", "legal", seeds=3)
    path = tmp_path / "tiny.json"
    baselines.update(path, "tiny", [record])
    data = json.loads(path.read_text())
    for entry in data["cells"]["bert-sentiment-legal"].values():
        for g in entry["gain"].values():
            g["verdict"] = "neutral" if g["verdict"] == "inconclusive" else g["verdict"]
    path.write_text(json.dumps(data))
    assert "neutral" in path.read_text()
    loaded = baselines.load(path, "tiny")["bert-sentiment-legal"]
    verdicts = {g["verdict"] for e in loaded.values() for g in e["gain"].values()}
    assert "neutral" not in verdicts and verdicts <= {"positive", "negative", "inconclusive"}
    assert baselines.check(record, baselines.load(path, "tiny"), path).status == "ok"


def test_a_lost_language_fails(tmp_path):
    base = make_record("bert", "sentiment", "legal")
    record = make_record("bert", "sentiment", "legal", languages=("en", "de"))
    result = _check(record, base, tmp_path)
    assert result.status == "changed" and result.message.splitlines()[3].split()[:4] == ["fr", "language", "present",
                                                                                           "missing"]


def test_no_baseline_is_new(tmp_path):
    record = make_record("bert", "sentiment", "legal")
    result = baselines.check(record, {}, tmp_path / "tiny.json")
    assert (result.status, result.message) == \
        ("new", f"bert-sentiment-legal: no baseline in {tmp_path / 'tiny.json'}; record one with --update-baselines")


def test_each_comparison_of_a_cell_uses_a_bonferroni_level():
    assert cell_level(3) == pytest.approx(1 - 0.05 / 9)
    base = make_record("bert", "sentiment", "legal", seeds=3)
    rows = baselines.judge(base, base)
    assert len(rows) == 9 and {r["change"]["level"] for r in rows} == {cell_level(3)}

