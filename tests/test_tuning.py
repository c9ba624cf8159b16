"""Fair arms (docs/methodology.md: is the comparison fair?): search-space checks, early stopping and selection on
validation data only, the convergence check, the validation split, the main metric for imbalanced targets,
uninformative verdicts."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_pytest, write_jsonl

from harness.definitions import data as D
from harness.definitions.grid import Cell
from harness.definitions.metrics import main_metric, single_class
from harness.definitions.space import SearchSpace, TuningError, parse_space
from harness.definitions.specfile import SpecError, apply_spec
from harness.definitions.tasks import task_type
from harness.running.tuning import RISING, Search, convergence

# ---------------------------------------------------------------- search space

@pytest.mark.parametrize("table, key, problem", [
    ({"lr": [1e-4], "warmup": 2}, "warmup", ("unknown key (valid: lr, max_epochs, patience, min_epochs, selection, "
                                                  "validation_fraction, min_validation)")),
    ({"min_validation": 0}, "min_validation", "integer of at least 1, got 0"),
    ({"min_epochs": 0}, "min_epochs", "integer of at least 1, got 0"),
    ({"min_epochs": 13, "max_epochs": 12}, "min_epochs", "must not exceed max_epochs (12), got 13"),
    ({"selection": "median"}, "selection", "must be one of best, one-se, got 'median'"),
    ({"lr": []}, "lr", "non-empty list"),
    ({"lr": [1e-4, 0.0]}, "lr", "positive number"),
    ({"lr": [-1e-4]}, "lr", "positive number"),
    ({"lr": 1e-4}, "lr", "non-empty list"),
    ({"lr": [1e-4, 1e-4]}, "lr", "repeated value"),
    ({"max_epochs": 0}, "max_epochs", "integer of at least 1, got 0"),
    ({"max_epochs": 2.5}, "max_epochs", "integer of at least 1"),
    ({"max_epochs": True}, "max_epochs", "integer of at least 1"),
    ({"patience": 0}, "patience", "integer of at least 1, got 0"),
    ({"patience": -2}, "patience", "integer of at least 1"),
    ({"patience": "3"}, "patience", "integer of at least 1"),
    ({"epochs": [2, 3, 4]}, "epochs", "replaced by 'max_epochs' (the epoch limit of each run) and 'patience'"),
    ({"validation_fraction": 1.5}, "validation_fraction", "between 0 and 1"),
])
def test_bad_search_space_is_a_one_line_error_naming_where_and_key(table, key, problem):
    with pytest.raises(TuningError) as info:
        parse_space(table, "my.toml")
    message = str(info.value)
    assert message.startswith(f"my.toml key 'tuning.{key}': ") and problem in message and "\n" not in message


def test_search_space_keeps_the_base_for_keys_left_out():
    base = SearchSpace(lr=(1e-4, 3e-4), max_epochs=5, patience=2, validation_fraction=0.1)
    space = parse_space({"lr": [3e-4, 1e-5], "patience": 3}, "x", base)
    assert space == SearchSpace(lr=(1e-5, 3e-4), max_epochs=5, patience=3, validation_fraction=0.1)
    assert space.trials == 2 and parse_space({}, "x", base) == base


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


@pytest.mark.slow
@pytest.mark.subprocess
def test_plugin_reports_a_bad_search_space_at_collection(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text("[tuning]\npatience = 0\n", encoding="utf-8")
    run = run_pytest("bench", "--collect-only", "-q", "-p", "no:hypothesispytest", "--tune", f"--spec={spec}",
                     f"--cache-dir={tmp_path / 'cache'}", f"--results-dir={tmp_path / 'results'}", timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr
    assert f"ERROR: {spec} key 'tuning.patience': must be an integer of at least 1, got 0" in run.stderr
    assert "Traceback" not in run.stderr


def test_profile_spaces_pass_their_own_checks_and_tuning_is_off_only_in_tiny(tiny_profile):
    from harness.definitions.profiles import PROFILES

    paper_profile = PROFILES["paper"](None, Path("."))
    for space in (tiny_profile.tuning, paper_profile.tuning):
        assert parse_space(space.describe(), "profile") == space
    assert (tiny_profile.tune, paper_profile.tune) == (False, True)
    assert paper_profile.tuning.lr == (2e-5, 5e-5) and paper_profile.tuning.max_epochs > 4


# ---------------------------------------------------------------- selection and convergence

def _scripted(space: SearchSpace, curves: dict, se: float = 0.0) -> tuple[Search, dict]:
    """Drive a Search as train() would: per learning rate, epochs until observe() says stop. The model's weight
    holds lr * 10 + epoch, so the kept state says which epoch it came from. Returns the search and the epochs
    each run trained."""
    model = torch.nn.Linear(2, 1)
    search, ran = Search(space, score=lambda p: float(p.mean()), se=lambda p: se), {}
    for lr, scores in curves.items():
        for epoch in range(1, space.max_epochs + 1):
            with torch.no_grad():
                model.weight.fill_(lr * 10 + epoch)
            ran[lr] = epoch
            if search.observe(lr, epoch, np.array([scores[epoch - 1]]), model):
                break
    return search, ran


def test_patience_stops_a_run_at_the_right_epoch_and_the_best_epoch_weights_are_kept():
    space = SearchSpace(lr=(1e-4, 1e-3), max_epochs=8, patience=2)
    search, ran = _scripted(space, {1e-4: [0.1, 0.3, 0.6, 0.5, 0.55, 0.9, 0.9, 0.9],   # best 3, stops at 5
                                    1e-3: [0.2, 0.4, 0.45, 0.5, 0.58, 0.59, 0.595, 0.7]})  # never 2 flat: to 8
    assert ran == {1e-4: 5, 1e-3: 8}
    assert search.runs[1e-4] == {"lr": 1e-4, "curve": [0.1, 0.3, 0.6, 0.5, 0.55], "best_epoch": 3,
                                 "stopped": "patience"}
    assert search.runs[1e-3]["stopped"] == "max_epochs" and search.runs[1e-3]["best_epoch"] == 8
    assert search.best == {"lr": 1e-3, "epoch": 8, "validation": 0.7}
    assert torch.all(search.state["weight"] == 1e-3 * 10 + 8)
    # a best epoch that is not the last one: the kept weights are that epoch's, not the run's final ones
    search, ran = _scripted(SearchSpace(lr=(1e-4,), max_epochs=6, patience=3), {1e-4: [0.2, 0.7, 0.6, 0.65, 0.69]})
    assert ran == {1e-4: 5} and search.best == {"lr": 1e-4, "epoch": 2, "validation": 0.7}
    assert torch.all(search.state["weight"] == 1e-4 * 10 + 2)
    result = search.result(seed=7)
    assert result == {"seed": 7, "choice": {"lr": 1e-4, "epoch": 2, "validation": 0.7},
                      "best": {"lr": 1e-4, "epoch": 2, "validation": 0.7, "se": 0.0}, "threshold": 0.7,
                      "selection": "best", "runs": [{"lr": 1e-4, "curve": [0.2, 0.7, 0.6, 0.65, 0.69], "best_epoch": 2,
                                "stopped": "patience"}],
                      "curve": [0.2, 0.7, 0.6, 0.65, 0.69], "stopped": "patience"}


def test_min_epochs_keeps_a_slow_start_running_until_patience_may_count():
    slow = {1e-4: [0.3, 0.3, 0.3, 0.3, 0.5, 0.7, 0.72, 0.71, 0.7, 0.7]}  # flat, then rising
    search, ran = _scripted(SearchSpace(lr=(1e-4,), max_epochs=10, patience=3), slow)
    assert ran == {1e-4: 4} and search.choice["validation"] == 0.3  # today: stops at 1 + patience
    search, ran = _scripted(SearchSpace(lr=(1e-4,), max_epochs=10, patience=3, min_epochs=6), slow)
    assert ran == {1e-4: 10} and search.choice == {"lr": 1e-4, "epoch": 7, "validation": 0.72}
    assert torch.all(search.state["weight"] == 1e-4 * 10 + 7)
    # patience still counts from the run's best epoch once min_epochs have run
    search, ran = _scripted(SearchSpace(lr=(1e-4,), max_epochs=10, patience=2, min_epochs=3),
                            {1e-4: [0.9, 0.5, 0.5, 0.5, 0.5]})
    assert ran == {1e-4: 3}


JAGGED = {1e-4: [0.66, 0.68, 0.67, 0.67, 0.67, 0.66], 3e-4: [0.60, 0.46, 0.69, 0.67, 0.62, 0.59]}  # the curves


def test_one_se_takes_the_most_conservative_checkpoint_within_one_se_of_the_best():
    space = SearchSpace(lr=(1e-4, 3e-4), max_epochs=6, patience=3)
    best, _ = _scripted(space, JAGGED)
    assert best.choice == {"lr": 3e-4, "epoch": 3, "validation": 0.69}  # the peak of the jagged curve
    one_se, _ = _scripted(dataclasses.replace(space, selection="one-se"), JAGGED, se=0.03)
    # threshold 0.69 - 0.03 = 0.66: the first checkpoint of the lower rate already reaches it
    assert one_se.choice == {"lr": 1e-4, "epoch": 1, "validation": 0.66}
    assert torch.all(one_se.state["weight"] == 1e-4 * 10 + 1)
    small, _ = _scripted(dataclasses.replace(space, selection="one-se"), JAGGED, se=0.015)  # threshold 0.675
    assert small.choice == {"lr": 1e-4, "epoch": 2, "validation": 0.68}
    assert torch.all(small.state["weight"] == 1e-4 * 10 + 2)
    result = small.result(seed=0)
    assert result["best"] == {"lr": 3e-4, "epoch": 3, "validation": 0.69, "se": 0.015}
    assert result["threshold"] == pytest.approx(0.675) and result["curve"] == JAGGED[1e-4][:5]  # patience stops it at 5
    assert len(small.candidates) == 2  # 0.68 and 0.69 held, the checkpoints below the threshold dropped


def test_one_se_with_zero_se_is_the_best_rule():
    space = SearchSpace(lr=(1e-4, 3e-4), max_epochs=6, patience=3)
    best, _ = _scripted(space, JAGGED)
    zero, _ = _scripted(dataclasses.replace(space, selection="one-se"), JAGGED, se=0.0)
    assert zero.choice == best.choice and len(zero.candidates) == 1


def test_validation_se_is_the_bootstrap_se_of_the_metric_and_fixed():
    from harness.definitions.metrics import FUNCTIONS
    from harness.running.tuning import validation_se

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    pred = np.where(rng.random(400) < 0.8, y, 1 - y)
    se = validation_se(FUNCTIONS["accuracy"], y)
    assert se(pred) == se(pred)  # the same resamples every call
    assert se(pred) == pytest.approx(np.sqrt(0.8 * 0.2 / 400), rel=0.2)  # binomial SE of an accuracy of 0.8


def test_ties_keep_the_first_and_do_not_count_as_improvement():
    search, ran = _scripted(SearchSpace(lr=(1e-4, 1e-3), max_epochs=5, patience=1),
                            {1e-4: [0.5, 0.5, 0.9], 1e-3: [0.3, 0.5, 0.4]})
    assert ran == {1e-4: 2, 1e-3: 3}  # a tie is no improvement: patience 1 stops at epoch 2
    assert search.best == {"lr": 1e-4, "epoch": 1, "validation": 0.5}
    assert torch.all(search.state["weight"] == 1e-4 * 10 + 1)


def test_patience_wins_over_max_epochs_when_both_end_a_run_at_the_same_epoch():
    search, _ = _scripted(SearchSpace(lr=(1e-4,), max_epochs=4, patience=2), {1e-4: [0.1, 0.5, 0.4, 0.45]})
    assert search.runs[1e-4]["stopped"] == "patience"


def _result(seed, curve, stopped):
    return {"seed": seed, "curve": curve, "stopped": stopped}


def test_under_trained_only_when_stopped_by_max_epochs_while_still_rising():
    rising = convergence([_result(0, [0.47, 0.47, 0.68], "max_epochs"), _result(1, [0.2, 0.5, 0.4], "patience")])
    assert rising["under_trained"] and rising["note"] == "may be under-trained" and rising["rising_seeds"] == [0]
    assert rising["stopped"] == ["max_epochs", "patience"]
    assert rising["last_epoch_rise"] == pytest.approx([0.21, -0.1])
    # the same rising curve stopped by patience (impossible in practice, but the flag reads the stop reason)
    assert not convergence([_result(0, [0.47, 0.47, 0.68], "patience")])["under_trained"]
    # at the limit, but the last epoch is not above the best before it by more than RISING: converged
    flat = convergence([_result(0, [0.2, 0.6, 0.5, 0.6 + RISING / 2], "max_epochs")])
    assert not flat["under_trained"] and flat["note"] is None and flat["rising_seeds"] == []
    assert convergence([_result(0, [0.2, 0.6, 0.5, 0.6 + 2 * RISING], "max_epochs")])["under_trained"]
    assert convergence([_result(3, [0.3], "max_epochs")])["under_trained"] is False  # one epoch: nothing to read


def _tiny_rows(profile, tok, limit: int):
    """The first `limit` training rows of tiny's general classification target, encoded (32 tokens), and labels."""
    split = D.load_split(profile.targets[("classification", "general")], profile.data_root, "train", limit=limit)
    labels = task_type("classification").label_set(split.labels)
    return D.encode(tok, split, 32, labels), labels


def test_train_stops_after_the_epoch_whose_hook_says_so(tiny_profile, tiny_tokenizers):
    from harness.training.loop import train
    from harness.training.models import build_model

    spec, tok = tiny_profile.models["bert"], tiny_tokenizers["bert"]
    enc, labels = _tiny_rows(tiny_profile, tok, 32)
    cfg = dataclasses.replace(tiny_profile.target_train, epochs=5, max_length=32)
    seen = []
    model = build_model(spec, tok, len(labels), 32, seed=1)
    info = train(model, enc, cfg, 1, "cpu", tok.pad_token_id, False, on_epoch=lambda e: seen.append(e) or e == 2)
    assert seen == [1, 2] and info["examples"] == 2 * len(enc)
    assert info["steps"] == 5 * -(-len(enc) // cfg.batch_size)  # the schedule stays planned for all 5 epochs


def test_select_returns_the_best_epoch_weights_not_the_last_ones(tiny_profile, tiny_tokenizers):
    """The selected model holds the weights of its best epoch bit for bit (the same run replayed and stopped
    there), not those of the epoch its run stopped at."""
    from types import SimpleNamespace

    from harness.running import arms
    from harness.training.loop import train
    from harness.training.models import build_model

    spec, tok = tiny_profile.models["bert"], tiny_tokenizers["bert"]
    enc, labels = _tiny_rows(tiny_profile, tok, 96)
    def rows(part):
        return D.Encoded(enc.input_ids[part], enc.token_type_ids and enc.token_type_ids[part], enc.targets[part])

    train_enc, val_enc = rows(slice(0, 64)), rows(slice(64, 96))
    hp = dataclasses.replace(tiny_profile.target_train, max_length=32)
    ctx = SimpleNamespace(profile=SimpleNamespace(target_train=hp), device="cpu", compile=False, calibration=False)
    space = SearchSpace(lr=(3e-3,), max_epochs=6, patience=1)
    setup = arms.Setup(ctx, SimpleNamespace(id="t"), spec, tok, len(labels), hp, "cls", "cross", "random", train_enc,
                       val_enc, "accuracy")
    chosen = arms.tuned(setup, "direct", 2, space)
    model, result, info = chosen.model, chosen.selected, chosen.info
    run = result["runs"][0]
    assert run["stopped"] == "patience" and len(run["curve"]) == run["best_epoch"] + 1  # trained one epoch past
    assert result["choice"]["epoch"] == run["best_epoch"]
    assert info["examples"] == len(run["curve"]) * len(train_enc)

    def replay(epochs):
        again = build_model(spec, tok, len(labels), 32, seed=2)
        train(again, train_enc, dataclasses.replace(hp, lr=3e-3, epochs=6), 2, "cpu", tok.pad_token_id, False,
              on_epoch=lambda e: e == epochs)
        return again.state_dict()

    kept, best, last = model.state_dict(), replay(run["best_epoch"]), replay(len(run["curve"]))
    assert all(torch.equal(kept[k], best[k]) for k in kept)
    assert not all(torch.equal(kept[k], last[k]) for k in kept)


def test_per_epoch_validation_does_not_change_training(tiny_profile, tiny_tokenizers):
    """The hook predicts between epochs: training must end with the same weights as without it (RNG untouched)."""
    from harness.training.loop import predict, train
    from harness.training.models import build_model

    spec, tok = tiny_profile.models["bert"], tiny_tokenizers["bert"]
    enc, labels = _tiny_rows(tiny_profile, tok, 64)
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
    from harness.running.context import RunContext

    profile = micro(data_dir, tmp / "cache")
    ctx = RunContext(profile=profile, results_dir=tmp / "results", cache_dir=tmp / "cache", seeds=[0, 1],
                     tune=True)
    record = run_cell(ctx, Cell("bert", "classification", "general"))
    with np.load(tmp / "results" / "predictions" / "bert-classification-general.npz") as z:
        return record, {k: z[k] for k in z.files if not k.startswith("y_true")}


@pytest.mark.slow
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
    assert tuning["space"] == {"lr": [1e-3, 3e-3], "max_epochs": 2, "patience": 1, "min_epochs": 1,
                               "selection": "best", "validation_fraction": 0.15, "min_validation": 30}
    assert tuning["trials_per_arm"] == 2 and tuning["metric"] == first["main_metric"] == "accuracy"
    epochs_run = {}
    for arm in ("direct", "intermediate"):
        assert [r["seed"] for r in tuning["arms"][arm]] == [0, 1]
        for result in tuning["arms"][arm]:
            assert [run["lr"] for run in result["runs"]] == [1e-3, 3e-3]
            for run in result["runs"]:
                assert 1 <= len(run["curve"]) <= 2 and run["stopped"] in ("patience", "max_epochs")
                assert run["curve"][run["best_epoch"] - 1] == max(run["curve"])
            chosen = next(run for run in result["runs"] if run["lr"] == result["choice"]["lr"])
            assert result["choice"]["validation"] == max(max(run["curve"]) for run in result["runs"])
            assert (result["curve"], result["stopped"]) == (chosen["curve"], chosen["stopped"])
            assert chosen["curve"][result["choice"]["epoch"] - 1] == result["choice"]["validation"]
        assert set(tuning["convergence"][arm]) == {"stopped", "last_epoch_rise", "rising_seeds", "under_trained",
                                                   "note"}
        epochs_run[arm] = sum(len(run["curve"]) for result in tuning["arms"][arm] for run in result["runs"])
    assert first["under_trained"] == [a for a in ("direct", "intermediate")
                                      if tuning["convergence"][a]["under_trained"]]
    target = first["data"]["target"]
    assert (target["validation"], target["validation_source"]) == (48, "own")
    budget = first["budget"]
    assert budget["intermediate"]["total_steps"] == budget["intermediate"]["intermediate_steps"] + \
        budget["intermediate"]["target_steps"]
    assert budget["trained_steps"] == {arm: epochs_run[arm] * 6 for arm in epochs_run}  # epochs run x steps/epoch
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


@pytest.mark.slow
def test_a_validation_split_under_min_validation_trains_the_fixed_recipe_and_says_so(tiny_corpora, tmp_path, caplog):
    """48 validation rows against min_validation 49: the tuned cell trains exactly as an untuned one (same key, same
    predictions, no search), and its record and log say why; at 48 it is searched."""
    from micro_profile import micro

    from harness.pipeline import run_cell
    from harness.running.context import RunContext

    def run(where: str, tune: bool, min_validation: int) -> tuple[dict, dict]:
        profile = micro(tiny_corpora, tmp_path / where / "cache")
        profile = dataclasses.replace(profile, tuning=dataclasses.replace(profile.tuning,
                                                                          min_validation=min_validation))
        ctx = RunContext(profile=profile, results_dir=tmp_path / where / "results", cache_dir=tmp_path / where / "cache",
                         seeds=[0], tune=tune)
        record = run_cell(ctx, Cell("bert", "classification", "general"))
        with np.load(tmp_path / where / "results" / "predictions" / "bert-classification-general.npz") as z:
            return record, {k: z[k] for k in z.files}

    with caplog.at_level("WARNING", logger="harness.running.cell"):
        skipped, skipped_preds = run("skipped", True, 49)
    untuned, untuned_preds = run("untuned", False, 49)
    assert skipped["tuning_skipped"] == {"validation": 48, "validation_source": "own", "min_validation": 49,
                                         "reason": "too few to rank checkpoints"}
    assert "tuning" not in skipped and "tuning" not in skipped["hyperparameters"]
    assert skipped["config_key"] == untuned["config_key"] and "tuning_skipped" not in untuned
    assert skipped_preds.keys() == untuned_preds.keys()
    assert all(np.array_equal(skipped_preds[k], untuned_preds[k]) for k in skipped_preds)
    assert any("48 validation rows, fewer than tuning.min_validation = 49" in r.getMessage() for r in caplog.records)
    searched, _ = run("searched", True, 48)
    assert "tuning_skipped" not in searched and searched["tuning"]["space"]["min_validation"] == 48
