"""Baseline files and the regression check (harness/baselines.py), on synthetic records."""
from __future__ import annotations

import copy
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recordgen import make_record

from harness import baselines
from harness.baselines import FIELDS, FLOOR, BaselineError


def _file(tmp_path, records, profile="tiny"):
    path = baselines.baseline_path(tmp_path / "baselines", profile)
    baselines.update(path, profile, records)
    return path


def test_update_records_the_given_cells_and_keeps_the_others(tmp_path):
    a, b = make_record("bert", "sentiment", "general"), make_record("xlnet", "similarity", "legal")
    path = _file(tmp_path, [a, b])
    rerun = make_record("bert", "sentiment", "general", shift=0.25)
    baselines.update(path, "tiny", [rerun])
    cells = baselines.load(path, "tiny")
    assert cells == {a["cell"]: baselines.entry(rerun), b["cell"]: baselines.entry(b)}
    assert set(cells[a["cell"]]) == set(FIELDS)


def test_baseline_file_is_sorted_and_complete(tmp_path):
    path = _file(tmp_path, [make_record("xlnet", "sentiment", "medical"), make_record("bert", "sentiment", "legal")])
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, indent=1, sort_keys=True) + "\n"
    assert (data["schema"], data["profile"], list(data["cells"])) == \
        (1, "tiny", ["bert-sentiment-legal", "xlnet-sentiment-medical"])
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny.json.lock", "tiny.json"]  # no temp files


@pytest.mark.parametrize("content, message", [
    ('{"schema": 1, "profile": "tiny", "cells": {', "not valid JSON (line 1"),
    ("[1, 2]", "not a baseline file"),
    ('{"schema": 7, "profile": "tiny", "cells": {}}', "schema version 7"),
    ('{"schema": 1, "profile": "minilm", "cells": {}}', "baselines of profile 'minilm', this run uses 'tiny'"),
    ('{"schema": 1, "profile": "tiny", "cells": {"bert-sentiment-general": {"gain": {}}}}',
     "cell 'bert-sentiment-general' field 'main_metric' missing"),
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


def test_missing_file_holds_no_baselines(tmp_path):
    assert baselines.load(tmp_path / "tiny.json", "tiny") == {}


def test_tolerance_is_three_standard_errors_of_a_difference_with_a_floor():
    assert baselines.tolerance([0.5]) == FLOOR
    assert baselines.tolerance([0.5, 0.5, 0.5]) == FLOOR
    # sd 0.1 over 3 seeds: 3 * sqrt(2) * 0.1 / sqrt(3)
    assert baselines.tolerance([0.4, 0.5, 0.6]) == pytest.approx(3 * 2 ** 0.5 * 0.1 / 3 ** 0.5)


def _check(record, base_record, tmp_path):
    return baselines.check(record, {base_record["cell"]: baselines.entry(base_record)}, tmp_path / "tiny.json")


@given(st.sampled_from(["classification", "similarity"]), st.floats(-0.2, 0.2), st.integers(1, 3))
@settings(max_examples=30)
def test_a_record_passes_against_itself_and_against_any_rise(tmp_path_factory, task, shift, seeds):
    base = make_record("roberta", task, "medical", seeds=seeds)
    assert _check(base, base, tmp_path_factory.getbasetemp())[0] == "ok"
    better = copy.deepcopy(base)
    for lang in better["languages"]:
        better["metrics"]["intermediate"][lang][base["main_metric"]] += abs(shift)
    assert _check(better, base, tmp_path_factory.getbasetemp())[0] == "ok"


def test_a_fall_within_the_tolerance_passes_and_beyond_it_fails_with_a_table(tmp_path):
    base = make_record("bert", "classification", "general")
    record = copy.deepcopy(base)
    record["metrics"]["direct"]["de"]["accuracy"] -= FLOOR / 2
    assert _check(record, base, tmp_path)[0] == "ok"
    record["metrics"]["direct"]["de"]["accuracy"] -= FLOOR
    status, message = _check(record, base, tmp_path)
    was = base["metrics"]["direct"]["de"]["accuracy"]
    assert status == "changed"
    lines = message.splitlines()
    assert lines[0] == f"bert-classification-general: differs from {tmp_path / 'tiny.json'}"
    assert lines[1].split() == ["lang", "what", "baseline", "now", "allowed"]
    assert lines[3].split() == ["de", "direct", "accuracy", f"{was:.3f}", f"{was - 1.5 * FLOOR:.3f}", "(-0.030)",
                                ">=", "-0.020"]
    assert len(lines) == 4


def test_a_flipped_verdict_fails(tmp_path):
    base = make_record("xlnet", "similarity", "legal")
    record = copy.deepcopy(base)
    old = base["gain"]["fr"]["verdict"]
    record["gain"]["fr"]["verdict"] = "neutral" if old != "neutral" else "positive"
    status, message = _check(record, base, tmp_path)
    assert status == "changed"
    assert [line.split()[:3] for line in message.splitlines()[3:]] == [["fr", "gain", "verdict"]]


def test_a_lost_language_fails(tmp_path):
    base = make_record("bert", "sentiment", "legal")
    record = make_record("bert", "sentiment", "legal", languages=("en", "de"))
    status, message = _check(record, base, tmp_path)
    assert status == "changed" and message.splitlines()[3].split() == ["fr", "language", "present", "missing"]


def test_no_baseline_is_new_and_other_seeds_are_not_compared(tmp_path):
    record = make_record("bert", "sentiment", "legal")
    assert baselines.check(record, {}, tmp_path / "tiny.json") == \
        ("new", f"bert-sentiment-legal: no baseline in {tmp_path / 'tiny.json'}; record one with --update-baselines")
    status, message = _check(record, make_record("bert", "sentiment", "legal", seeds=3), tmp_path)
    assert status == "mismatch" and "seeds [0, 1, 2], this run [0]" in message and "--seeds 3" in message
