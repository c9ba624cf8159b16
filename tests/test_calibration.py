"""The A/A run (`--calibration`): the intermediate arm replaced by a second direct arm with its own seed stream, its
records kept apart, no baseline checked or written, and its summary counting the verdicts, every one of which is a
false positive."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from helpers import grid_run, records
from recordgen import tiny_grid_records
from scipy import stats as sps

from harness.definitions.grid import Cell
from harness.output.report import to_markdown
from harness.output.summary import summarise
from harness.running.arms import CALIBRATION_SEEDS, arm_seed
from harness.running.context import RunContext


def test_the_second_direct_arm_has_a_seed_stream_of_its_own(tiny_profile, tmp_path):
    aa = RunContext(profile=tiny_profile, results_dir=tmp_path, cache_dir=tmp_path, seeds=[0, 1, 2], calibration=True)
    plain = RunContext(profile=tiny_profile, results_dir=tmp_path, cache_dir=tmp_path, seeds=[0, 1, 2])
    assert [arm_seed(aa, "direct", s) for s in aa.seeds] == [0, 1, 2]
    assert [arm_seed(aa, "intermediate", s) for s in aa.seeds] == [CALIBRATION_SEEDS + s for s in (0, 1, 2)]
    assert [arm_seed(plain, "intermediate", s) for s in plain.seeds] == [0, 1, 2]  # a real run: the cell's seeds


def aa_records(decided: dict) -> list[dict]:
    """The 27 synthetic tiny records as an A/A run's, with the verdicts of `decided` {(cell, lang): verdict}
    and every other one inconclusive."""
    out = []
    for r in tiny_grid_records():
        r = {**copy.deepcopy(r), "calibration": True}
        for lang, g in r["gain"].items():
            g["verdict"] = decided.get((r["cell"], lang), "inconclusive")
            g.pop("per_seed", None)  # one seed: the record's own verdicts, nothing moderated
        out.append(r)
    return out


def test_the_summary_counts_every_decided_verdict_as_a_false_positive():
    decided = {("roberta-sentiment-general", "en"): "positive", ("roberta-sentiment-legal", "de"): "negative",
               ("bert-similarity-medical", "fr"): "positive"}
    summary = summarise(aa_records(decided))
    cal = summary["calibration"]
    assert cal["cells"] == 27 and cal["nominal"] == pytest.approx(0.05) and not cal["mixed"]
    every, roberta = cal["strata"]["all gains"], cal["strata"]["model roberta"]
    assert (every["gains"], every["positive"], every["negative"]) == (81, 2, 1)
    assert (roberta["gains"], roberta["positive"], roberta["negative"]) == (27, 1, 1)
    assert cal["strata"]["model xlnet"]["positive"] + cal["strata"]["model xlnet"]["negative"] == 0
    low, high = sps.binomtest(3, 81).proportion_ci(0.95, "exact")
    assert (every["ci_low"], every["ci_high"]) == pytest.approx((low, high))
    target = cal["strata"]["target language"]
    assert target["gains"] == 27 and target["positive"] == 1  # roberta-sentiment-general en
    text = to_markdown(summary)
    assert text.index("CALIBRATION RUN") < text.index("## Main table")
    assert "all gains: 3 of 81 gains decided (2 positive, 1 negative): 3.7% [0.8%, 10.4%] against the nominal 5%" \
        in text


def test_a_run_that_is_not_a_calibration_has_no_calibration_block():
    summary = summarise(tiny_grid_records())
    assert summary["calibration"] is None and "CALIBRATION" not in to_markdown(summary)


@pytest.mark.slow
def test_a_cell_trains_two_direct_arms_and_no_intermediate_model(tiny_corpora, tmp_path):
    """An A/A cell: no intermediate model is trained or read, the second arm differs from the first (its own
    seeds), and the record says it is a calibration with no intermediate steps in its budget."""
    from micro_profile import micro

    from harness.pipeline import run_cell

    profile = micro(tiny_corpora, tmp_path / "cache")
    ctx = RunContext(profile=profile, results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", seeds=[0, 1],
                     calibration=True)
    record = run_cell(ctx, Cell("bert", "similarity", "general"))  # scores: the arms differ wherever they do
    assert record["calibration"] is True and record["intermediate"] == [] and record["intermediate_key"] is None
    assert record["budget"]["intermediate"]["intermediate_steps"] == 0
    assert not (tmp_path / "cache" / "intermediate").exists()
    with np.load(tmp_path / "results" / "predictions" / "bert-similarity-general.npz") as z:
        assert not np.array_equal(z["direct/en"], z["intermediate/en"])
    plain = RunContext(profile=profile, results_dir=tmp_path / "plain", cache_dir=tmp_path / "cache", seeds=[0, 1])
    assert run_cell(plain, Cell("bert", "similarity", "general"))["config_key"] != record["config_key"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_calibration_run_keeps_its_records_apart_and_never_touches_baselines(tmp_path):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    run = grid_run(tmp_path, "-k", "bert-classification-general", "--calibration", "--update-baselines",
                   f"--baselines={baselines}", seeds="2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "an A/A run is never recorded as a baseline" in run.stdout
    assert list(baselines.iterdir()) == []  # nothing written, not even an empty file
    assert not (tmp_path / "results" / "cells").exists()  # a real run's records are never overwritten
    (record,) = records(tmp_path / "results" / "calibration").values()
    assert record["calibration"] is True and record["cell"] == "bert-classification-general"
    summary = json.loads((tmp_path / "results" / "calibration" / "summary.json").read_text())
    assert summary["calibration"]["strata"]["all gains"]["gains"] == 3
