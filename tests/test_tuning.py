"""Fair arms (issue 12): search-space checks, selection on validation data only, the convergence check, the
validation split, the main metric for imbalanced targets, uninformative verdicts."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.definitions import data as D
from harness.definitions.grid import Cell
from harness.definitions.metrics import main_metric, single_class
from harness.definitions.space import SearchSpace, TuningError, parse_space
from harness.definitions.specfile import SpecError, apply_spec
from harness.definitions.tasks import task_type
from harness.running.tuning import RISING, Search, convergence
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- search space

@pytest.mark.parametrize("table, key, problem", [
    ({"lr": [1e-4], "patience": 2}, "patience", "unknown key"),
    ({"lr": []}, "lr", "non-empty list"),
    ({"epochs": []}, "epochs", "non-empty list"),
    ({"lr": [1e-4, 0.0]}, "lr", "positive number"),
    ({"lr": [-1e-4]}, "lr", "positive number"),
    ({"lr": 1e-4}, "lr", "non-empty list"),
    ({"epochs": [2, 2.5]}, "epochs", "positive integer"),
    ({"epochs": [True]}, "epochs", "positive integer"),
    ({"lr": [1e-4, 1e-4]}, "lr", "repeated value"),
    ({"validation_fraction": 1.5}, "validation_fraction", "between 0 and 1"),
])
def test_bad_search_space_is_a_one_line_error_naming_where_and_key(table, key, problem):
    with pytest.raises(TuningError) as info:
        parse_space(table, "my.toml")
    message = str(info.value)
    assert message.startswith(f"my.toml key 'tuning.{key}': ") and problem in message and "\n" not in message


def test_search_space_keeps_the_base_for_keys_left_out():
    base = SearchSpace(lr=(1e-4, 3e-4), epochs=(2, 3), validation_fraction=0.1)
    space = parse_space({"epochs": [4, 2]}, "x", base)
    assert space == SearchSpace(lr=(1e-4, 3e-4), epochs=(2, 4), validation_fraction=0.1)
    assert (space.trials, space.max_epochs) == (4, 4)


def test_spec_tuning_table_replaces_the_profile_space_and_bad_one_fails_at_load(tiny_profile, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[tuning]\nlr = [5e-4, 1e-3]\n", encoding="utf-8")
    profile = apply_spec(tiny_profile, good, None)
    assert profile.tuning == dataclasses.replace(tiny_profile.tuning, lr=(5e-4, 1e-3))
    bad = tmp_path / "bad.toml"
    bad.write_text("[tuning]\nlr = [1e-3, 0]\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        apply_spec(tiny_profile, bad, None)
    assert str(info.value).startswith(f"{bad} key 'tuning.lr': every value must be a positive number")


def test_plugin_reports_a_bad_search_space_at_collection(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text("[tuning]\nepochs = []\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), "--collect-only", "-q", "--tune",
                          "--spec", str(spec), "--cache-dir", str(tmp_path / "cache"),
                          "--results-dir", str(tmp_path / "results")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr
    assert f"ERROR: {spec} key 'tuning.epochs': must be a non-empty list, got []" in run.stderr
    assert "Traceback" not in run.stderr


def test_profile_spaces_pass_their_own_checks_and_tuning_is_off_only_in_tiny(tiny_profile):
    from harness.definitions.profiles import PROFILES

    paper_profile = PROFILES["paper"](None, Path("."))
    for space in (tiny_profile.tuning, paper_profile.tuning):
        assert parse_space(space.describe(), "profile") == space
    assert (tiny_profile.tune, paper_profile.tune) == (False, True)
    assert paper_profile.tuning.lr == (2e-5, 5e-5) and paper_profile.tuning.epochs == (2, 3, 4)


# ---------------------------------------------------------------- selection and convergence

def test_search_keeps_the_best_trial_first_on_ties_and_copies_its_weights():
    model = torch.nn.Linear(2, 1)
    search = Search(SearchSpace(lr=(1e-4, 1e-3), epochs=(2, 3)), score=lambda p: float(p.mean()))
    for lr, scores in ((1e-4, [0.1, 0.5, 0.4]), (1e-3, [0.2, 0.5, 0.3])):
        for epoch, value in enumerate(scores, 1):
            with torch.no_grad():
                model.weight.fill_(lr * 10 + epoch)
            search.observe(lr, epoch, np.array([value]), model)
    assert search.best == {"lr": 1e-4, "epochs": 2, "validation": 0.5}  # epoch 1 is no trial; 1e-3 only ties
    assert len(search.trials) == 4 and search.curves[1e-3] == [0.2, 0.5, 0.3]
    assert torch.all(search.state["weight"] == 1e-3 + 2)
    result = search.result(seed=7)
    assert result["seed"] == 7 and result["curve"] == [0.1, 0.5, 0.4]


def test_convergence_flags_a_curve_still_rising_at_its_last_epoch():
    rising = convergence([{"curve": [0.2, 0.3, 0.5]}, {"curve": [0.2, 0.4, 0.4]}])
    assert rising["under_trained"] and rising["note"] == "may be under-trained"
    assert rising["last_epoch_rise"] == pytest.approx(0.1)
    flat = convergence([{"curve": [0.2, 0.5, 0.5 + RISING / 2]}])
    assert not flat["under_trained"] and flat["note"] is None
    assert convergence([{"curve": [0.3]}])["under_trained"] is False


def test_per_epoch_validation_does_not_change_training(tiny_profile, tiny_tokenizers):
    """The hook predicts between epochs: training must end with the same weights as without it (RNG untouched)."""
    from harness.running.models import build_model
    from harness.running.train import predict, train

    spec, tok = tiny_profile.models["bert"], tiny_tokenizers["bert"]
    split = D.load_split(tiny_profile.targets[("classification", "general")], tiny_profile.data_root, "train",
                         limit=64)
    labels = task_type("classification").label_set(split.labels)
    enc = D.encode(tok, split, 32, labels)
    cfg = dataclasses.replace(tiny_profile.target_train, epochs=2, max_length=32)
    weights, epochs_seen = [], []
    for hook in (None, lambda epoch: epochs_seen.append((epoch, predict(model, enc, 16, "cpu", 0, False)))):
        model = build_model(spec, tok, len(labels), 32, seed=3)
        info = train(model, enc, cfg, 3, "cpu", tok.pad_token_id, False, on_epoch=hook)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert [e for e, _ in epochs_seen] == [1, 2] and info["callback_seconds"] > 0
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ---------------------------------------------------------------- validation split and main metric

def test_validation_split_own_unused_rows_or_carved(tmp_path):
    from harness.definitions.config import DatasetConfig

    rows = [{"text": f"sentence {i}", "label": "ab"[i % 2]} for i in range(40)]
    write_jsonl(tmp_path / "own" / "train.jsonl", rows)
    write_jsonl(tmp_path / "own" / "dev.jsonl", rows[:10] + [{"text": "odd one", "label": "c"}])
    write_jsonl(tmp_path / "own" / "test.jsonl", rows[:5])
    write_jsonl(tmp_path / "plain" / "train.jsonl", rows)
    own = DatasetConfig("own", "classification", "general", path="own")
    train = D.load_split(own, tmp_path, "train")
    tr, val, source = D.validation_split(own, tmp_path, train, ["a", "b"], 0.15)
    assert source == "own" and tr is train and len(val) == 10  # the unknown label 'c' is left out

    sub = DatasetConfig("plain", "classification", "general", path="plain", max_train=20, max_test=8)
    train = D.load_split(sub, tmp_path, "train", limit=20)
    tr, val, source = D.validation_split(sub, tmp_path, train, ["a", "b"], 0.15)
    assert source == "unused training rows" and tr is train and len(val) == 8
    assert not set(val.texts) & set(train.texts)

    whole = DatasetConfig("plain", "classification", "general", path="plain")
    train = D.load_split(whole, tmp_path, "train")
    tr, val, source = D.validation_split(whole, tmp_path, train, ["a", "b"], 0.15)
    assert source == "carved" and (len(tr), len(val)) == (34, 6)
    assert sorted(tr.texts + val.texts) == sorted(train.texts)
    again = D.validation_split(whole, tmp_path, train, ["a", "b"], 0.15)[1]
    assert again.texts == val.texts  # fixed seed


def test_main_metric_is_macro_f1_for_imbalanced_labels_and_says_why():
    assert main_metric("classification", ["fair"] * 9 + ["unfair"])[0] == "macro_f1"
    assert "90% of training examples are 'fair'" in main_metric("classification", ["fair"] * 9 + ["unfair"])[1]
    assert main_metric("sentiment", ["a", "b", "c"] * 3) == ("accuracy", "default for sentiment")
    assert main_metric("classification", ["a"] * 6 + ["b"] * 4)[0] == "accuracy"  # 60% is not above 60%
    assert main_metric("similarity", None) == ("spearman", "default for similarity")
    assert main_metric("classification", ["a", "b"], "macro_f1") == ("macro_f1", "declared by the data set")
    assert single_class([np.zeros(4), np.zeros(4)]) and not single_class([np.zeros(4), np.array([0, 1, 0, 0])])


# ---------------------------------------------------------------- a tuned cell, end to end

def _tuned_cell(data_dir: Path, tmp: Path) -> dict:
    from micro_profile import micro

    from harness.pipeline import run_cell
    from harness.running.assets import RunContext

    profile = micro(data_dir, tmp / "cache")
    ctx = RunContext(profile=profile, results_dir=tmp / "results", cache_dir=tmp / "cache", seeds=[0, 1],
                     tune=True)
    record = run_cell(ctx, Cell("bert", "classification", "general"))
    with np.load(tmp / "results" / "predictions" / "bert-classification-general.npz") as z:
        return record, {k: z[k] for k in z.files if not k.startswith("y_true")}


def test_selection_never_reads_test_labels(tiny_corpora, tmp_path):
    """The same tuned cell on data whose test labels are scrambled: every validation score, every choice and
    every test prediction must be the same (selection on test labels would change them); test scores differ."""
    scrambled = tmp_path / "scrambled"
    shutil.copytree(tiny_corpora, scrambled)
    test = scrambled / "classification-general" / "en" / "test.jsonl"
    rows = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()]
    labels = sorted({r["label"] for r in rows})
    write_jsonl(test, [{**r, "label": labels[(labels.index(r["label"]) + 1) % len(labels)]} for r in rows])

    first, first_preds = _tuned_cell(tiny_corpora, tmp_path / "a")
    second, second_preds = _tuned_cell(scrambled, tmp_path / "b")
    assert first["tuning"] == second["tuning"]
    assert first_preds.keys() == second_preds.keys()
    assert all(np.array_equal(first_preds[k], second_preds[k]) for k in first_preds)
    assert first["metrics"]["direct"]["en"] != second["metrics"]["direct"]["en"]  # the test labels did change

    tuning = first["tuning"]
    assert tuning["space"] == {"lr": [1e-3, 3e-3], "epochs": [1, 2], "validation_fraction": 0.15}
    assert tuning["trials_per_arm"] == 4 and tuning["metric"] == first["main_metric"] == "accuracy"
    for arm in ("direct", "intermediate"):
        assert [r["seed"] for r in tuning["arms"][arm]] == [0, 1]
        for result in tuning["arms"][arm]:
            assert len(result["trials"]) == 4 and len(result["curve"]) == 2
            assert result["choice"] == max(result["trials"], key=lambda t: t["validation"])
        assert set(tuning["convergence"][arm]) == {"curve", "last_epoch_rise", "under_trained", "note"}
    assert first["under_trained"] == [a for a in ("direct", "intermediate")
                                      if tuning["convergence"][a]["under_trained"]]
    target = first["data"]["target"]
    assert (target["validation"], target["validation_source"]) == (48, "own")
    budget = first["budget"]
    assert budget["intermediate"]["total_steps"] == budget["intermediate"]["intermediate_steps"] + \
        budget["intermediate"]["target_steps"]
    assert budget["trained_steps"]["direct"] == 2 * 2 * 2 * 6  # seeds x learning rates x epochs x steps/epoch
    assert first["timings"]["validation_s"] > 0


def test_spec_main_metric_is_checked_and_declared_metric_wins(tiny_profile, tmp_path):
    rows = [{"text": f"clause {i}", "label": "ab"[i % 2]} for i in range(10)]
    write_jsonl(tmp_path / "c" / "train.jsonl", rows)
    write_jsonl(tmp_path / "c" / "test.jsonl", rows[:4])
    spec = tmp_path / "s.toml"
    entry = '[[dataset]]\nname = "c"\ntask = "classification"\ndomain = "legal"\npath = "c"\n'
    spec.write_text(entry + 'main_metric = "macro_f1"\n', encoding="utf-8")
    declared = apply_spec(tiny_profile, spec, tmp_path).targets[("classification", "legal")].main_metric
    assert main_metric("classification", [r["label"] for r in rows], declared) == ("macro_f1",
                                                                                   "declared by the data set")
    spec.write_text(entry + 'main_metric = "spearman"\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        apply_spec(tiny_profile, spec, tmp_path)
    assert str(info.value).startswith(f"{spec}: [[dataset]] 1 (c) key 'main_metric': unknown metric 'spearman'")
