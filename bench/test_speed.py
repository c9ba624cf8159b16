"""Speed of the harness's training loop and prediction against Hugging Face Trainer (pytest-benchmark).

    pytest bench/test_speed.py --benchmark-only

Not part of the grid run (bench/conftest.py collects this file only under --benchmark-only or when named).
For each tiny family (bert, roberta, xlnet) and for all-MiniLM-L6-v2 (profile `minilm`, real data from
../shared/data), both sides get the same model (same seed, same initial weights), data (the profile's
classification intermediate set, one epoch), batch size, maximum length, hyper-parameters, torch threads and
number of steps. Trainer pads each batch to its longest example (`trainer`, the strong reference); training is
also timed with run_glue.py's default of padding every example to the maximum length (`trainer_padmax`).
Rounds alternate: pytest-benchmark's untimed `setup` runs Trainer's round(s), then the timed target runs the
harness's, so the load of a shared machine falls on all alike; one warm-up round of each is dropped. The speed of
the 2-core machine drifts by tens of percent from second to second, so single rounds' ratios scatter (they are
kept in extra_info, `..._per_round`); the figure to read is the median. Each test's
extra_info (and the table at the end of the run) holds the rates, the speed-ups (median over rounds of Trainer's
time over the harness's, by wall clock and by process CPU time, which other processes on a shared machine disturb
less), the harness's MFU, and for training the test accuracy each side reached.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import make_trainer, trainer_predict

from harness.definitions import data as D
from harness.definitions.config import ModelConfig, TrainConfig
from harness.definitions.metrics import accuracy
from harness.definitions.profiles import load_profile
from harness.running.context import RunContext, load_dataset, tokenizer_for
from harness.training import flops, together
from harness.training.devices import default_device, precision, threads_per_worker, usable_cores
from harness.training.loop import lengths_of, predict, train
from harness.training.models import build_model

pytest.importorskip("pytest_benchmark", reason="the speed benchmarks need the test extra: pip install -e '.[test]'")
pytest.importorskip("accelerate", reason="Hugging Face Trainer needs accelerate (the test extra)")

log = logging.getLogger("harness.speed")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES = {"tiny-bert": ("tiny", "bert"), "tiny-roberta": ("tiny", "roberta"), "tiny-xlnet": ("tiny", "xlnet"),
         "minilm": ("minilm", "bert")}
ROUNDS = {"tiny": {"train": 7, "eval": 7}, "minilm": {"train": 3, "eval": 3}}
MAX_TRAIN = {"minilm": 320}  # 20 steps of 16: a MiniLM round takes tens of seconds on 2 cores
SEED = 0
# test_ensemble_speed: the members a tiny cell trains together at each stage, with that stage's recipe (target:
# 3 seeds x 2 arms, batch 16; intermediate: 3 seeds, batch 32), timed rounds (TRANSFER_BENCH_ENSEMBLE_ROUNDS
# overrides); MiniLM (a tuned profile, which trains sequentially) at the intermediate stage only
ENSEMBLE = {"members": {"target": [0, 1, 2, 3, 4, 5], "intermediate": [0, 1, 2]}, "rounds": {"tiny": 3, "minilm": 1}}


@dataclass
class Case:
    name: str
    spec: ModelConfig
    tokenizer: object
    cfg: TrainConfig  # the profile's intermediate recipe, one epoch
    target_cfg: TrainConfig  # its target recipe, one epoch
    train: D.Encoded
    test: D.Encoded
    num_labels: int
    rounds: dict
    device: str

    def model(self):
        return build_model(self.spec, self.tokenizer, self.num_labels, self.cfg.max_length, SEED)

    @property
    def padding(self) -> tuple[int, bool]:
        return self.tokenizer.pad_token_id, self.tokenizer.padding_side == "left"


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    kind, model = CASES[request.param]
    config = request.config
    cache = Path(config.getoption("cache_dir") or config.getini("cache_dir"))
    try:
        profile = load_profile(kind, SHARED_DATA if kind == "minilm" else None, cache)
    except ValueError as err:  # minilm without ../shared/data or without the weights package
        pytest.skip(str(err))
    torch.set_num_threads(threads_per_worker(profile.threads, usable_cores()))
    ctx = RunContext(profile, tmp_path_factory.mktemp("results"), cache, seeds=[SEED])
    data = load_dataset(ctx, profile.intermediates["classification"])
    tok = tokenizer_for(ctx, model)
    cfg = replace(profile.intermediate_train, epochs=1)
    train_split = data.train
    if kind in MAX_TRAIN:
        train_split = D.Split(train_split.file, train_split.texts[:MAX_TRAIN[kind]], None,
                              train_split.labels[:MAX_TRAIN[kind]])
    encode = lambda split: D.encode(tok, split, cfg.max_length, data.labels)  # noqa: E731
    return Case(request.param, profile.models[model], tok, cfg, replace(profile.target_train, epochs=1),
                encode(train_split),
                encode(data.tests[data.dataset.language]), len(data.labels), ROUNDS[kind], default_device())


def clock(run) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `run()`; on a GPU, queued work is waited for."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def summarise(benchmark, table: list, case: Case, phase: str, examples: int, ours: list, theirs: dict,
              flop_count: float, **extra) -> dict:
    """Rates and speed-ups over the timed rounds (the first, warm-up, round dropped), into extra_info and table.

    `theirs` maps a reference's name to its (wall, cpu) seconds per round, paired with `ours` by round."""
    ours = ours[1:]
    wall = statistics.median(w for w, _ in ours)
    peak, source = flops.peak_flops(case.device, precision(case.device))
    row = {"case": case.name, "phase": phase, "examples": examples, "rounds": len(ours),
           "harness_ex_per_s": examples / wall}
    for name, runs in theirs.items():
        runs = runs[1:]
        row[f"{name}_ex_per_s"] = examples / statistics.median(w for w, _ in runs)
        row[f"speedup_wall_vs_{name}"] = statistics.median(t[0] / o[0] for o, t in zip(ours, runs))
        row[f"speedup_cpu_vs_{name}"] = statistics.median(t[1] / o[1] for o, t in zip(ours, runs))
        benchmark.extra_info[f"speedup_wall_vs_{name}_per_round"] = [t[0] / o[0] for o, t in zip(ours, runs)]
    row.update(harness_mfu=flop_count / wall / peak, **extra)
    benchmark.extra_info.update(row, peak_flop_per_s=peak, peak_source=source)
    table.append(row)
    log.info("%s", row)
    return row


def test_training_speed(case: Case, benchmark, speed_table, tmp_path):
    ours, theirs, trained = [], {"trainer": [], "trainer_padmax": []}, {}
    pad, left = case.padding

    def trainer_round():  # untimed setup: Trainer's rounds (the closest reference last), then a fresh model
        for name, padmax in (("trainer_padmax", True), ("trainer", False)):
            trainer = make_trainer(case.model(), case.tokenizer, case.train, case.cfg, SEED, tmp_path, case.device,
                                   pad_to_max_length=padmax)
            theirs[name].append(clock(trainer.train))
            trained[name] = trainer
        return (case.model(),), {}

    def harness_round(model):
        ours.append(clock(lambda: train(model, case.train, case.cfg, SEED, case.device, pad, left, desc=case.name)))
        trained["harness"] = model

    benchmark.pedantic(harness_round, setup=trainer_round, rounds=case.rounds["train"], warmup_rounds=1)
    ours_acc = accuracy(case.test.targets, predict(trained["harness"], case.test, case.cfg.eval_batch_size,
                                                   case.device, pad, left))
    theirs_acc = accuracy(case.test.targets, trainer_predict(trained["trainer"], case.test))
    examples = case.cfg.epochs * len(case.train)
    row = summarise(benchmark, speed_table, case, "train", examples, ours, theirs,
                    flops.train_flops(trained["harness"], lengths_of(case.train), case.cfg.epochs),
                    harness_accuracy=ours_acc, trainer_accuracy=theirs_acc)
    assert len(ours) == len(theirs["trainer"]) == case.rounds["train"] + 1
    assert row["harness_ex_per_s"] > 0 and row["trainer_ex_per_s"] > 0
    majority = np.bincount(case.test.targets).max() / len(case.test)
    assert min(ours_acc, theirs_acc) > majority, "a side did not learn: the comparison would mean nothing"


def test_prediction_speed(case: Case, benchmark, speed_table, tmp_path):
    ours, theirs, preds = [], {"trainer": []}, {}
    pad, left = case.padding
    model = case.model()

    def trainer_round():
        trainer = make_trainer(model, case.tokenizer, case.train, case.cfg, SEED, tmp_path, case.device)
        theirs["trainer"].append(clock(lambda: preds.update(trainer=trainer_predict(trainer, case.test))))
        return (), {}

    def harness_round():
        ours.append(clock(lambda: preds.update(
            harness=predict(model, case.test, case.cfg.eval_batch_size, case.device, pad, left))))

    benchmark.pedantic(harness_round, setup=trainer_round, rounds=case.rounds["eval"], warmup_rounds=1)
    agreement = float(np.mean(preds["harness"] == preds["trainer"]))
    summarise(benchmark, speed_table, case, "eval", len(case.test), ours, theirs,
              flops.forward_flops(model, lengths_of(case.test)), agreement=agreement)
    assert agreement >= 0.99, f"the same weights predict differently: {agreement:.3f} agreement"


@pytest.mark.parametrize("stage", list(ENSEMBLE["members"]))
def test_ensemble_speed(case: Case, stage: str, benchmark, speed_table):
    """The members a cell trains together at `stage` (ENSEMBLE), one after the other (harness.training.loop) vs
    together (harness.training.together: the tiny profile's default, pytest --ensemble), alternating rounds; the
    same models (one per member seed), data (one epoch of the classification intermediate set) and the stage's
    hyper-parameters. The models are built with [CLS] pooling, the head the grouped model trains (a mean-pooled
    MiniLM cell trains its seeds one after another: harness.running.cell._stackable)."""
    if case.name == "minilm" and stage == "target":
        pytest.skip("MiniLM: the intermediate stage only (its profile is tuned and trains sequentially)")
    seeds, ours, theirs, done = ENSEMBLE["members"][stage], [], {"sequential": []}, {}
    cfg = case.target_cfg if stage == "target" else case.cfg
    pad, left = case.padding
    fresh = lambda: [build_model(case.spec, case.tokenizer, case.num_labels, cfg.max_length, s,  # noqa: E731
                                 pooling="cls") for s in seeds]

    def sequential_round():
        models = fresh()
        theirs["sequential"].append(clock(lambda: [train(m, case.train, cfg, s, case.device, pad, left)
                                                   for m, s in zip(models, seeds)]))
        done["sequential"] = models
        return (fresh(),), {}

    def ensemble_round(models):
        ours.append(clock(lambda: together.train_together(models, case.spec.family, case.train, cfg, seeds,
                                                          case.device, pad, left)))
        done["ensemble"] = models

    rounds = int(os.environ.get("TRANSFER_BENCH_ENSEMBLE_ROUNDS", 0)) or \
        ENSEMBLE["rounds"]["minilm" if case.name == "minilm" else "tiny"]
    benchmark.pedantic(ensemble_round, setup=sequential_round, rounds=rounds, warmup_rounds=1)
    accuracy_of = lambda models: [accuracy(case.test.targets, p) for p in together.predict_together(  # noqa: E731
        models, case.spec.family, case.test, cfg.eval_batch_size, case.device, pad, left)]
    examples = len(seeds) * len(case.train)
    row = summarise(benchmark, speed_table, case, f"train {stage} x{len(seeds)}", examples, ours, theirs,
                    len(seeds) * flops.train_flops(done["ensemble"][0], lengths_of(case.train), 1),
                    members=len(seeds), batch_size=cfg.batch_size,
                    ensemble_accuracy=statistics.mean(accuracy_of(done["ensemble"])),
                    sequential_accuracy=statistics.mean(accuracy_of(done["sequential"])))
    row["harness_ex_per_s_per_model"] = row["harness_ex_per_s"] / len(seeds)
    benchmark.extra_info["harness_ex_per_s_per_model"] = row["harness_ex_per_s_per_model"]
    assert row["harness_ex_per_s"] > 0 and row["sequential_ex_per_s"] > 0
