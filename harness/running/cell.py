"""Train and evaluate one cell: both arms for every seed, evaluated in every language, scored per seed.

`train_cell` returns an `Outcome`: the record's fields that training determines (metrics per arm, language and
seed, data sizes, budget, tuning, timings, environment) and the per-example predictions. The statistics of
the record (gains, intervals, standard errors, verdicts) are computed from those predictions by
harness.results.analysis, and harness.pipeline writes both; tokenizers and intermediate checkpoints are
cached under the cache directory (jiant style: each stage leaves an inspectable file).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.definitions.grid import ARMS, Cell
from harness.definitions.metrics import EQUIVALENCE_MARGIN, equivalence_margin, main_metric, score
from harness.definitions.tasks import task_type
from harness.fileio import fingerprint
from harness.running import arms, probe, tuning
from harness.running.context import Loaded, RunContext, encode, load_dataset, tokenizer_for
from harness.running.environment import env_info, model_build
from harness.running.heads import cell_head_init, cell_heads, heads_key
from harness.training import flops, grouped, together
from harness.training.devices import precision
from harness.training.loop import lengths_of, predict

log = logging.getLogger(__name__)

TOO_FEW_VALIDATION = "too few to rank checkpoints"  # why a tuned cell trained the fixed recipe (record `tuning_skipped`)
AUTO_RULE = "obf-1"  # the rule of --seeds auto (harness.results.sequential): part of the configuration key


@dataclass
class Outcome:
    """A cell's trained result: the record without its statistics, and the predictions they come from
    (`y_true/LANG` and `ARM/LANG`, seeds x examples). `reused`: `record` is a finished record, nothing ran."""
    record: dict
    arrays: dict = field(default_factory=dict)
    reused: bool = False


def train_cell(ctx: RunContext, cell: Cell, finished=lambda key: None, more=None) -> Outcome:
    """Train and evaluate both arms of a cell for every seed. `finished(config_key)` returns a finished record
    of the same configuration to reuse (resume), or None to train.

    `more(seeds, arrays, metric, language, margin) -> list[int]` (--seeds auto:MAX; harness.pipeline), when given,
    is asked after ctx.seeds and after every later round, with the seeds trained so far and their predictions
    (`_arrays`), which seeds to train next: none ends the cell. The record then holds every seed trained.

    Each arm and seed is trained by one strategy of harness.running.arms: tuned (ctx.tune: selected on the
    validation split, only the selected model evaluated on the test sets), grouped (ctx.train_together, untuned
    cells that stack) or sequential (the profile's recipe). A tuned cell whose validation split has fewer than
    `tuning.min_validation` rows is trained untuned (record `tuning_skipped`: the sizes and why)."""
    p = ctx.profile
    t0 = time.perf_counter()
    space = p.tuning if ctx.tune else None
    target = load_dataset(ctx, p.targets[(cell.task, cell.domain)],
                          validation_fraction=space.validation_fraction if space else None)
    skipped = None
    if space is not None and target.validation is not None and len(target.validation) < space.min_validation:
        skipped = {"validation": len(target.validation), "validation_source": target.validation_source,
                   "min_validation": space.min_validation, "reason": TOO_FEW_VALIDATION}
        ctx, space = dataclasses.replace(ctx, tune=False), None  # the cell is untuned from here on (key, record)
        target = load_dataset(ctx, p.targets[(cell.task, cell.domain)])
        log.warning("%s: %d validation rows, fewer than tuning.min_validation = %d: %s; training the fixed recipe "
                    "on its %d training rows", cell.id, skipped["validation"], skipped["min_validation"],
                    TOO_FEW_VALIDATION, len(target.train))
    main = main_metric(cell.task, target.train.labels if target.labels else None, target.dataset.main_metric)
    key = config_key(ctx, cell, target.digest, main[0])
    if not ctx.rerun:
        done = finished(key)
        if done is not None:
            log.info("%s: finished record of the same configuration reused (--rerun trains again)", cell.id)
            return Outcome(done, reused=True)
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)  # validate before any training
    flops.reset_peak_memory(ctx.device)
    setup, test_enc = cell_setup(ctx, cell, target, main[0], space is not None)
    timings = {"load_s": time.perf_counter() - t0, "intermediate_s": 0.0, "train_s": 0.0, "validation_s": 0.0,
               "eval_s": 0.0, **({"probe_s": 0.0} if setup.head_init == "probe" else {})}
    seeds, margin = list(ctx.seeds), equivalence_margin(main[0], p.margins, ctx.margin)
    done = _evaluate(setup, space, test_enc, timings, seeds)
    while more is not None and (extra := more(list(seeds), _arrays(test_enc, done.preds), main[0],
                                              target.dataset.language, margin)):
        done = _evaluate(setup, space, test_enc, timings, extra, done)
        seeds += extra
    t = time.perf_counter()
    floor, record_floor = probe.floor(ctx, cell, target, setup.tokenizer, main[0])  # after the arms: streams untouched
    timings["frozen_s"] = time.perf_counter() - t
    record = _record(ctx, cell, target, test_enc, done.preds, done.inter_meta, main, key, seeds)
    record["metrics"]["frozen"] = {lang: score(cell.task, enc.targets, floor[lang]) for lang, enc in test_enc.items()}
    record["frozen"] = record_floor
    record["budget"] = _budget(ctx, inter, len(setup.train_enc), done.epochs, done.selected if space else None,
                               len(seeds))
    if ctx.calibration:
        record["calibration"] = True
    record["margin"] = margin
    if setup.head_init == "probe":
        record["head_init"] = {"mode": "probe", "arms": done.probes}
    if skipped is not None:
        record["tuning_skipped"] = skipped
    if space is not None:
        record["tuning"] = _tuning_record(space, main[0], done.selected)
        record["under_trained"] = [arm for arm in ARMS if record["tuning"]["convergence"][arm]["under_trained"]]
    timings.update(train_examples_per_s=done.train_examples / max(timings["train_s"], 1e-9),
                   eval_examples_per_s=done.eval_examples / max(timings["eval_s"], 1e-9),
                   total_s=time.perf_counter() - t0)
    record["timings"] = timings
    runs_epochs = setup.hp.epochs if space is None else \
        sum(map(_epochs_run, done.selected.values())) / (2 * len(seeds))
    record["throughput"] = _throughput(done.last_model, 2 * len(seeds), runs_epochs, setup.train_enc, test_enc,
                                       timings, ctx.device)
    frozen = {f"frozen/{lang}": x[None] for lang, x in floor.items()}
    return Outcome(record, {**_arrays(test_enc, done.preds), **frozen})


@dataclass
class Evaluated:
    """What a cell's arms left: test predictions per arm and language (seeds in order), the intermediate models'
    and probes' metadata, the epochs and search results behind each arm's models, example counts, the last model."""
    preds: dict
    inter_meta: list = field(default_factory=list)
    probes: dict = field(default_factory=lambda: {arm: [] for arm in ARMS})
    epochs: dict = field(default_factory=lambda: {arm: [] for arm in ARMS})
    selected: dict = field(default_factory=lambda: {arm: [] for arm in ARMS})
    train_examples: int = 0
    eval_examples: int = 0
    last_model: object = None


def _evaluate(setup: arms.Setup, space, test_enc: dict, timings: dict, seeds: list,
              done: Evaluated | None = None) -> Evaluated:
    """Train every arm of `seeds` (_train_arms) and predict each one's test sets as soon as it is trained, added to
    `done` (a new Evaluated when None); phase seconds are added to `timings`."""
    done = done or Evaluated({arm: {lang: [] for lang in test_enc} for arm in ARMS})
    pad, left = setup.pad
    for arm, seed, run in _train_arms(setup, space, seeds):
        if run.intermediate is not None:
            timings["intermediate_s"] += run.intermediate["seconds"]
            done.inter_meta.append({"seed": seed, **run.intermediate})
        if run.probe is not None:
            done.probes[arm].append(run.probe)
            timings["probe_s"] += run.probe["seconds"]
        done.epochs[arm].append(run.epochs)
        done.selected[arm].append(run.selected)
        timings["train_s"] += run.info["seconds"]
        timings["validation_s"] += run.info["callback_seconds"]
        done.train_examples += run.info["examples"]
        t = time.perf_counter()
        for lang, enc in test_enc.items():
            done.preds[arm][lang].append(predict(run.model, enc, setup.hp.eval_batch_size, setup.ctx.device, pad, left))
            done.eval_examples += len(enc)
        timings["eval_s"] += time.perf_counter() - t
        done.last_model = run.model
    return done


def cell_setup(ctx: RunContext, cell: Cell, target: Loaded, metric: str, tuned: bool) -> tuple[arms.Setup, dict]:
    """The cell's training setup (encoded splits, heads, recipe) and its encoded test splits per language."""
    p = ctx.profile
    tok = tokenizer_for(ctx, cell.model)
    hp = p.target_train
    pooling, head = cell_heads(p, cell)  # both arms and the intermediate model use the same head
    bi = head == "bi"
    test_enc = {lang: encode(ctx, tok, cell.model, s, hp.max_length, target.labels, bi)
                for lang, s in target.tests.items()}
    setup = arms.Setup(ctx, cell, p.models[cell.model], tok, task_type(cell.task).num_labels(target.labels), hp,
                       pooling, head, cell_head_init(p, cell),
                       encode(ctx, tok, cell.model, target.train, hp.max_length, target.labels, bi),
                       encode(ctx, tok, cell.model, target.validation, hp.max_length, target.labels, bi)
                       if tuned else None, metric)
    return setup, test_enc


def _train_arms(setup: arms.Setup, space, seeds: list):
    """(arm, seed, ArmRun) of `seeds` in the order (seed, arm), by the cell's strategy; a sequential or tuned run is
    trained when its turn comes, so one such model is held at a time."""
    ctx, cell = setup.ctx, setup.cell
    stackable = _stackable(ctx, cell)
    if ctx.train_together and not stackable:
        log.info("%s: --train-together covers untuned cells with [CLS] pooling and a cross head started at random; "
                 "training its seeds one after another", cell.id)
    if ctx.train_together and stackable:  # the group of these seeds (and their intermediate models)
        runs = arms.grouped(dataclasses.replace(setup, ctx=dataclasses.replace(ctx, seeds=list(seeds))))
    else:
        runs = None
    for seed in seeds:
        for arm in ARMS:
            if runs is not None:
                yield arm, seed, runs.pop((arm, seed))
            else:
                yield arm, seed, arms.tuned(setup, arm, seed, space) if space else arms.sequential(setup, arm, seed)


def _tuning_record(space: tuning.SearchSpace, metric: str, selected: dict) -> dict:
    """The record's `tuning` block: the space, every run's validation curve and stop reason, the choice (learning
    rate, epoch) per arm and seed, and each arm's convergence check. `trials_per_arm`: runs per arm and seed."""
    return {"space": space.describe(), "trials_per_arm": space.trials, "metric": metric, "arms": selected,
            "convergence": {arm: tuning.convergence(results) for arm, results in selected.items()}}


def _budget(ctx: RunContext, inter: Loaded, n_train: int, epochs: dict, selected: dict | None, seeds: int) -> dict:
    """Optimizer steps behind each arm's evaluated model (mean over seeds; `epochs`: the chosen epoch counts): the
    intermediate arm adds the intermediate task's steps to its target steps. `trained_steps`: every target step
    the cell ran (all runs, all seeds; `selected`: the search results, None untuned), the cost of the comparison."""
    p, hp = ctx.profile, ctx.profile.target_train
    per_epoch = math.ceil(n_train / hp.batch_size)
    intermediate = 0 if ctx.calibration else \
        p.intermediate_train.epochs * math.ceil(len(inter.train) / p.intermediate_train.batch_size)
    target = {arm: float(np.mean(e)) * per_epoch for arm, e in epochs.items()}
    runs = {arm: (_epochs_run(selected[arm]) if selected else seeds * hp.epochs) * per_epoch for arm in ARMS}
    return {"direct": {"target_steps": target["direct"], "total_steps": target["direct"]},
            "intermediate": {"intermediate_steps": intermediate, "target_steps": target["intermediate"],
                             "total_steps": intermediate + target["intermediate"]},
            "trained_steps": runs}


def _epochs_run(results: list[dict]) -> int:
    """Epochs trained by an arm's search over all its seeds and runs (early stopping makes them differ)."""
    return sum(len(run["curve"]) for result in results for run in result["runs"])


def _throughput(model, runs: int, epochs: int, train_enc, test_enc, timings, device) -> dict:
    """FLOP utilisation of the target training (`epochs` per arm and seed, over all trials; `runs`: arms x seeds) and
    of the test evaluation (every seed and arm), and the cell's peak memory."""
    train_flops = runs * flops.train_flops(model, lengths_of(train_enc), epochs)
    eval_flops = runs * sum(flops.forward_flops(model, lengths_of(enc)) for enc in test_enc.values())
    block = flops.throughput(train_flops, timings["train_s"], eval_flops, timings["eval_s"], device, precision(device))
    memory = flops.peak_memory(device)
    return {**block, "peak_memory_bytes": memory["bytes"], "peak_memory_kind": memory["kind"]}


def _record(ctx, cell, target: Loaded, test_enc, preds, inter_meta, main_why: tuple, key: str, seeds: list) -> dict:
    p = ctx.profile
    task, (main, why) = cell.task, main_why
    metrics, per_seed = {}, {}
    for arm, by_lang in preds.items():
        metrics[arm], per_seed[arm] = {}, {}
        for lang, runs in by_lang.items():
            scores = [score(task, test_enc[lang].targets, r) for r in runs]
            per_seed[arm][lang] = {m: [s[m] for s in scores] for m in task_type(task).metrics}
            metrics[arm][lang] = {m: float(np.mean(v)) for m, v in per_seed[arm][lang].items()}
    inter = p.intermediates[task]
    record = {
        "cell": cell.id, "profile": p.name, "model": p.models[cell.model].describe,
        "task": task, "domain": cell.domain, "seeds": list(seeds), "main_metric": main,
        "main_metric_reason": why,
        "language": target.dataset.language, "languages": list(test_enc),
        "metrics": metrics, "metrics_per_seed": per_seed,
        "intermediate_key": inter_meta[0]["key"] if inter_meta else None, "intermediate": inter_meta,
        "data": {"target": {"name": target.dataset.name, "train": len(target.train),
                            "test": {lang: len(s) for lang, s in target.tests.items()}, "digest": target.digest,
                            "labels": target.labels, **_validation_sizes(target)},
                 "intermediate": {"name": inter.name, "train": inter_meta[0]["examples"] if inter_meta else None}},
        "hyperparameters": {"target": vars(p.target_train), "intermediate": vars(p.intermediate_train),
                            **({"tuning": p.tuning.describe()} if ctx.tune else {})},
        "config_key": key,
        "env": {**env_info(ctx.device), **model_build(p.models[cell.model])},
    }
    return record


def _validation_sizes(target: Loaded) -> dict:
    if target.validation is None:
        return {}
    return {"validation": len(target.validation), "validation_source": target.validation_source}


def _stackable(ctx: RunContext, cell: Cell) -> bool:
    """Whether --train-together trains this cell: untuned, [CLS] pooling and a cross head started at random (what
    harness.training.together builds); other cells train their seeds one after another."""
    return (not ctx.tune and cell_heads(ctx.profile, cell) == ("cls", "cross")
            and cell_head_init(ctx.profile, cell) == "random")


def config_key(ctx: RunContext, cell: Cell, data_digest: str, main: str) -> str:
    """Everything that determines a cell's numbers: a record with the same key can be reused (resume). The
    search space, a non-default main metric and a probe-initialised head join the key only when in use (untuned
    keys stay as they were)."""
    import transformers
    p = ctx.profile
    extra = ([p.tuning] if ctx.tune else []) + ([main] if main != task_type(cell.task).main_metric else []) + \
        ([{"ensemble": grouped.STREAM, "pairing": together.PAIRING}] if ctx.train_together and _stackable(ctx, cell)
         else []) + \
        ([{"head_init": "probe"}] if cell_head_init(p, cell) == "probe" else []) + \
        ([{"calibration": arms.CALIBRATION_SEEDS}] if ctx.calibration else []) + \
        ([{"margin": margin}] if (margin := equivalence_margin(main, p.margins, ctx.margin)) != EQUIVALENCE_MARGIN
         else []) + \
        ([{"auto_seeds": ctx.auto_seeds, "rule": AUTO_RULE}] if ctx.auto_seeds else [])
    return fingerprint(p.name, p.models[cell.model].describe, data_digest, p.intermediates[cell.task],
                       p.target_train, p.intermediate_train, list(ctx.seeds), precision(ctx.device),
                       torch.__version__, transformers.__version__, *extra, *heads_key(p, cell),
                       {"frozen": probe.RECIPE})


def _arrays(test_enc, preds) -> dict:
    """Per-example predictions: what the gains are computed from, and what robustness is computed from."""
    arrays = {f"y_true/{lang}": enc.targets for lang, enc in test_enc.items()}
    for arm, by_lang in preds.items():
        for lang, runs in by_lang.items():
            arrays[f"{arm}/{lang}"] = np.stack(runs)
    return arrays
