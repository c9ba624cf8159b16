"""--seeds auto:MAX: the option's grammar, the looks a cell takes (harness.pipeline.Looks) and a cell that trains
more seeds while its target-language gain is undecided, its record keeping every look."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.definitions.grid import Cell
from harness.pipeline import Looks
from harness.pytest.options import parse_auto
from harness.results import sequential
from harness.running.context import RunContext


@pytest.mark.parametrize("text, most", [("auto:10", 10), (" auto:2", 2), ("3", None), ("3,4,5", None)])
def test_auto_is_read_from_seeds_and_the_other_forms_are_left_to_parse_seeds(text, most):
    assert parse_auto(text) == most


@pytest.mark.parametrize("text, problem", [("auto:", "expected auto:MAX"), ("auto:x", "expected auto:MAX"),
                                           ("auto:1", "MAX must be at least 2")])
def test_a_bad_auto_is_a_one_line_error(text, problem):
    with pytest.raises(ValueError) as info:
        parse_auto(text)
    assert problem in str(info.value) and "\n" not in str(info.value)


def _arrays(rng, seeds: int, gain: float, n: int = 400, spread: float = 1.0) -> dict:
    """Similarity predictions of `seeds` seeds: the intermediate arm's errors `gain` smaller than the direct arm's;
    each seed's errors are a shared draw plus `spread` times a draw of its own."""
    y = rng.normal(size=n)
    shared = rng.normal(size=(2, n))

    def arm(scale, which):
        return np.stack([y + scale * (shared[which] + spread * rng.normal(size=n)) for _ in range(seeds)])
    return {"y_true/en": y, "direct/en": arm(1.0, 0), "intermediate/en": arm(1.0 - gain, 1)}


def test_looks_asks_for_the_next_round_while_undecided_and_stops_when_decided():
    looks = Looks("bert-similarity-general", 3, 10)
    assert [n for n, _ in looks.plan] == [3, 6, 10]
    rng = np.random.default_rng(0)
    undecided = _arrays(rng, 3, 0.0, n=60)  # a null gain on few rows, seed noise dominating: undecided, not futile
    nxt = looks([0, 1, 2], undecided, "spearman", "en", 0.02)
    assert looks.looks[0]["seeds"] == 3 and looks.looks[0]["level"] == pytest.approx(dict(looks.plan)[3])
    assert looks.looks[0]["futile"] is False and looks.looks[0]["verdict"] not in sequential.DECIDED
    assert nxt == [3, 4, 5]
    clear = Looks("bert-similarity-general", 3, 10)
    assert clear([0, 1, 2], _arrays(rng, 3, 0.5, spread=0.01), "spearman", "en", 0.02) == []  # decided at once
    assert clear.looks[0]["verdict"] == "positive" and clear.looks[0]["futile"] is False
    json.dumps(looks.looks + clear.looks)  # what the record holds


def test_the_last_look_never_asks_for_more_and_apply_reads_every_gain_at_its_level():
    looks = Looks("c", 3, 6)
    rng = np.random.default_rng(1)
    assert looks([0, 1, 2, 3, 4, 5], _arrays(rng, 6, 0.0, n=60), "spearman", "en", 0.02) == []
    gain = {"mean": 0.03, "ci_low": 0.001, "ci_high": 0.06, "verdict": "positive", "per_seed": [0.01, 0.03, 0.05],
            "se_boot": 0.01, "se_seeds": [0.012] * 3, "p_value": 0.04, "margin": 0.02}
    record = looks.apply({"gain": {"en": gain}})
    level = looks.plan[-1][1]
    assert record["sequential"]["looks"] == looks.looks and record["sequential"]["planned"] == [3, 6]
    assert record["gain"]["en"]["level"] == level
    again = sequential.decide(gain, level)
    assert record["gain"]["en"]["ci_low"] == again["ci_low"] and record["gain"]["en"]["verdict"] == again["verdict"]


def test_futile_when_the_shared_test_set_noise_leaves_max_seeds_no_chance():
    # seeds agree, the test set is noisy (shared SE 0.1): no gain the interval allows is decided at 10 seeds
    noisy = {"mean": 0.01, "per_seed": [0.01, 0.0, 0.02], "se_boot": 0.1, "se_seeds": [0.1] * 3, "margin": 0.02}
    assert sequential.futile(noisy, 10) is True  # a Python bool: the record is JSON
    # the same mean with seed noise instead: the interval's far edge is a gain 10 seeds would decide, go on
    seedy = {"mean": 0.01, "per_seed": [0.06, -0.05, 0.02], "se_boot": 0.02, "se_seeds": [0.02] * 3, "margin": 0.02}
    assert not sequential.futile(seedy, 10)
    agreeing = {"mean": 0.0, "per_seed": [0.001, -0.001, 0.0], "se_boot": 0.002, "se_seeds": [0.003] * 3,
                "margin": 0.02}
    assert not sequential.futile(agreeing, 10)  # equivalence is within reach


@pytest.mark.slow
def test_a_cell_with_auto_seeds_records_every_look_and_every_seed(tiny_corpora, tmp_path):
    from micro_profile import micro

    from harness.pipeline import run_cell

    profile = micro(tiny_corpora, tmp_path / "cache")
    ctx = RunContext(profile=profile, results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", seeds=[0, 1],
                     auto_seeds=4)
    record = run_cell(ctx, Cell("bert", "similarity", "general"))
    block = record["sequential"]
    assert block["planned"] == [2, 4] and block["looks"][0]["seeds"] == 2
    trained = block["looks"][-1]["seeds"]
    assert record["seeds"] == list(range(trained)) and len(record["gain"]["en"]["per_seed"]) == trained
    assert len(record["metrics_per_seed"]["direct"]["en"][record["main_metric"]]) == trained
    assert block["stopped"] in ("decided", "futile", "max seeds")
    assert all(g["level"] == block["level"] for g in record["gain"].values())
    fixed = RunContext(profile=profile, results_dir=tmp_path / "fixed", cache_dir=tmp_path / "cache", seeds=[0, 1])
    plain = run_cell(fixed, Cell("bert", "similarity", "general"))
    assert plain["config_key"] != record["config_key"] and "sequential" not in plain
    # the first two seeds are the same models either way: auto adds seeds, it does not change them
    assert plain["metrics_per_seed"]["direct"]["en"] == {
        m: v[:2] for m, v in record["metrics_per_seed"]["direct"]["en"].items()}


def test_the_summary_lists_each_auto_cell_with_its_looks():
    from harness.output.summary import sequential_block, sequential_lines

    looks = [{"seeds": 3, "level": 0.99965, "verdict": "inconclusive", "mean": 0.02, "ci_low": -0.1, "ci_high": 0.14},
             {"seeds": 6, "level": 0.98874, "verdict": "positive", "mean": 0.04, "ci_low": 0.01, "ci_high": 0.07}]
    records = [{"cell": "bert-sentiment-general", "language": "en", "seeds": list(range(6)),
                "timings": {"total_s": 312.4},
                "sequential": {"max_seeds": 10, "looks": looks, "stopped": "decided"}},
               {"cell": "bert-similarity-general", "language": "en", "seeds": [0, 1, 2]}]
    block = sequential_block(records)
    assert [c["cell"] for c in block] == ["bert-sentiment-general"] and block[0]["seeds"] == 6
    (line,) = sequential_lines({"sequential": block})
    assert line == ("bert-sentiment-general (en): 3 seeds at 0.9997: inconclusive +0.020 [-0.100, +0.140], "
                    "6 seeds at 0.9887: positive +0.040 [+0.010, +0.070]; stopped: decided with 6 of at most 10 "
                    "seeds; 312 s")
    assert sequential_lines({"sequential": []}) == []


@pytest.mark.slow
@pytest.mark.subprocess
def test_auto_below_the_profiles_seeds_is_a_usage_error(tmp_path):
    from helpers import run_pytest

    run = run_pytest("bench", "--collect-only", "-q", "--seeds", "auto:2", f"--results-dir={tmp_path / 'r'}",
                     f"--cache-dir={tmp_path / 'c'}", timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr
    assert "ERROR: --seeds auto:2: MAX is below the profile's 3 seeds" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
