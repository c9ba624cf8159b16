"""Run one cell: both arms for every seed, evaluation in every language, gains, and the cell record.

Stages leave inspectable files (jiant style): tokenizers and intermediate checkpoints under the cache
directory, the record and the per-example predictions under the results directory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness import data as D
from harness import flops, stats
from harness.baselines import detectable
from harness.grid import Cell
from harness.metrics import MAIN_METRIC, METRICS, score
from harness.cache import atomic_dir, cached_encoding, file_digest, finished_record, fingerprint, tokenizer_digest
from harness.devices import device_info, precision
from harness.models import body_state, build_model, load_tokenizer
from harness.profiles import DatasetSpec, Profile
from harness.results import SCHEMA_VERSION, env_info, record_path, write_record
from harness.train import lengths_of, predict, train

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    profile: Profile
    results_dir: Path
    cache_dir: Path
    seeds: list
    device: str = "cpu"
    rerun: bool = False
    compile: bool = False  # torch.compile the model for training (pytest --compile)
    _memo: dict = field(default_factory=dict)

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


@dataclass
class Loaded:
    """A data set's splits after validation: train, the test split per language, label set and sizes."""
    spec: DatasetSpec
    train: D.Split
    tests: dict
    labels: list | None
    digest: str


def load_dataset(ctx: RunContext, spec: DatasetSpec, with_tests: bool = True) -> Loaded:
    def make():
        root = ctx.profile.data_root
        train_split = D.load_split(spec, root, "train", cache_dir=ctx.cache_dir / "datasets",
                                   limit=spec.max_train)
        labels = D.label_set(train_split, spec.task)
        tests = {}
        if with_tests:
            tests[spec.language] = D.load_split(spec, root, "test", labels, cache_dir=ctx.cache_dir / "datasets",
                                                limit=spec.max_test)
            for lang, rel in sorted(spec.cross_lingual.items()):
                tests[lang] = D.load_split(spec, root, "test", labels, file=D.cross_lingual_file(spec, root, rel),
                                           cache_dir=ctx.cache_dir / "datasets", limit=spec.max_test)
        files = [train_split.file] + [s.file for s in tests.values()]
        digest = fingerprint(spec, [file_digest(Path(f)) if Path(f).is_file() else f for f in files])
        return Loaded(spec, train_split, tests, labels, digest)
    return ctx.memo(("data", repr(spec), with_tests), make)


def tokenizer_for(ctx: RunContext, model_name: str):
    spec = ctx.profile.models[model_name]
    corpus = [Path(ctx.profile.data_root) / f for f in ctx.profile.tokenizer_corpus]
    return ctx.memo(("tok", model_name), lambda: load_tokenizer(spec, corpus, ctx.cache_dir))


def _encode(ctx, tokenizer, model_name, split: D.Split, max_length: int, labels):
    # id(split): a carved train and test split share their file (splits live as long as ctx, in its memo)
    return ctx.memo(("enc", model_name, split.file, len(split), id(split), max_length),
                    lambda: cached_encoding(ctx.cache_dir, tokenizer, split, max_length, labels))


def intermediate_body(ctx: RunContext, cell: Cell, seed: int) -> tuple[dict, dict]:
    """The encoder after intermediate training for (model, task, seed): trained once, cached on disk.

    Returns the body weights and metadata (key, whether it was trained by this call, seconds, examples/s).
    """
    from safetensors.torch import load_file, save_file

    p = ctx.profile
    spec = p.models[cell.model]
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)
    tok = tokenizer_for(ctx, cell.model)
    import transformers
    key = fingerprint("intermediate", spec.describe, inter.digest, p.intermediate_train, seed, tokenizer_digest(tok),
                      precision(ctx.device), torch.__version__, transformers.__version__)
    folder = ctx.cache_dir / "intermediate" / f"{cell.model}-{cell.task}-s{seed}-{key}"
    trained = {}

    def build(tmp: Path):
        num_labels = 1 if inter.labels is None else len(inter.labels)
        model = build_model(spec, tok, num_labels, p.intermediate_train.max_length, seed)
        enc = _encode(ctx, tok, cell.model, inter.train, p.intermediate_train.max_length, inter.labels)
        info = train(model, enc, p.intermediate_train, seed, ctx.device, tok.pad_token_id,
                     tok.padding_side == "left", desc=f"{cell.model}-{cell.task} intermediate s{seed}",
                     compile=ctx.compile)
        save_file(body_state(model), str(tmp / "body.safetensors"))
        (tmp / "meta.json").write_text(__import__("json").dumps({"key": key, **info}, indent=1))
        trained.update(info)

    atomic_dir(folder, build)
    meta = {"key": key, "trained_here": bool(trained), "seconds": trained.get("seconds", 0.0),
            "examples_per_s": trained.get("examples_per_s"), "examples": len(inter.train)}
    return load_file(str(folder / "body.safetensors")), meta


def run_cell(ctx: RunContext, cell: Cell) -> dict:
    """Train and evaluate both arms of a cell for every seed and write its record. Returns the record."""
    p = ctx.profile
    spec = p.models[cell.model]
    t0 = time.perf_counter()
    target = load_dataset(ctx, p.targets[(cell.task, cell.domain)])
    if not ctx.rerun:
        done = finished_record(record_path(ctx.results_dir, cell.id), config_key(ctx, cell, target.digest))
        if done is not None:
            log.info("%s: finished record of the same configuration reused (--rerun trains again)", cell.id)
            return done
    load_dataset(ctx, p.intermediates[cell.task], with_tests=False)  # validate before any training
    flops.reset_peak_memory(ctx.device)
    tok = tokenizer_for(ctx, cell.model)
    hp = p.target_train
    train_enc = _encode(ctx, tok, cell.model, target.train, hp.max_length, target.labels)
    test_enc = {lang: _encode(ctx, tok, cell.model, s, hp.max_length, target.labels) for lang, s in target.tests.items()}
    num_labels = 1 if target.labels is None else len(target.labels)
    pad, left = tok.pad_token_id, tok.padding_side == "left"
    timings = {"load_s": time.perf_counter() - t0, "intermediate_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    train_examples = eval_examples = 0
    preds = {"direct": {lang: [] for lang in test_enc}, "intermediate": {lang: [] for lang in test_enc}}
    inter_meta = []
    for seed in ctx.seeds:
        for arm in ("direct", "intermediate"):
            model = build_model(spec, tok, num_labels, hp.max_length, seed)
            if arm == "intermediate":
                body, meta = intermediate_body(ctx, cell, seed)
                model.base_model.load_state_dict(body)
                timings["intermediate_s"] += meta["seconds"]
                inter_meta.append({"seed": seed, **meta})
            info = train(model, train_enc, hp, seed, ctx.device, pad, left, desc=f"{cell.id} {arm} s{seed}",
                         compile=ctx.compile)
            timings["train_s"] += info["seconds"]
            train_examples += info["examples"]
            t = time.perf_counter()
            for lang, enc in test_enc.items():
                preds[arm][lang].append(predict(model, enc, hp.eval_batch_size, ctx.device, pad, left))
                eval_examples += len(enc)
            timings["eval_s"] += time.perf_counter() - t
    record = _record(ctx, cell, target, test_enc, preds, inter_meta)
    timings.update(train_examples_per_s=train_examples / max(timings["train_s"], 1e-9),
                   eval_examples_per_s=eval_examples / max(timings["eval_s"], 1e-9),
                   total_s=time.perf_counter() - t0)
    record["timings"] = timings
    record["throughput"] = _throughput(ctx, model, hp, train_enc, test_enc, timings)
    _save_predictions(ctx, cell, test_enc, preds)
    write_record(record_path(ctx.results_dir, cell.id), record)
    return record


def _throughput(ctx, model, hp, train_enc, test_enc, timings) -> dict:
    """FLOP utilisation of the target training and evaluation (every seed and arm), and the cell's peak memory."""
    runs = 2 * len(ctx.seeds)
    train_flops = runs * flops.train_flops(model, lengths_of(train_enc), hp.epochs)
    eval_flops = runs * sum(flops.forward_flops(model, lengths_of(enc)) for enc in test_enc.values())
    block = flops.throughput(train_flops, timings["train_s"], eval_flops, timings["eval_s"], ctx.device,
                             precision(ctx.device))
    memory = flops.peak_memory(ctx.device)
    return {**block, "peak_memory_bytes": memory["bytes"], "peak_memory_kind": memory["kind"]}


def _record(ctx, cell, target: Loaded, test_enc, preds, inter_meta) -> dict:
    p = ctx.profile
    task, main = cell.task, MAIN_METRIC[cell.task]
    metrics, per_seed, metrics_se, gains = {}, {}, {}, {}
    for arm, by_lang in preds.items():
        metrics[arm], per_seed[arm], metrics_se[arm] = {}, {}, {}
        for lang, runs in by_lang.items():
            scores = [score(task, test_enc[lang].targets, r) for r in runs]
            per_seed[arm][lang] = {m: [s[m] for s in scores] for m in METRICS[task]}
            metrics[arm][lang] = {m: float(np.mean(v)) for m, v in per_seed[arm][lang].items()}
            metrics_se[arm][lang] = {main: stats.metric_se(test_enc[lang].targets, np.stack(runs), main,
                                                           stats.stream_seed(cell.id, lang, arm))}
    for lang in test_enc:
        data = stats.arms(test_enc[lang].targets, preds["direct"][lang], preds["intermediate"][lang])
        gains[lang] = stats.gain(data, main, stats.stream_seed(cell.id, lang))
        gains[lang]["mdc"] = detectable(gains[lang], len(test_enc))
    inter = p.intermediates[task]
    record = {
        "schema": SCHEMA_VERSION, "cell": cell.id, "profile": p.name, "model": p.models[cell.model].describe,
        "task": task, "domain": cell.domain, "seeds": list(ctx.seeds), "main_metric": main,
        "language": target.spec.language, "languages": list(test_enc),
        "metrics": metrics, "metrics_per_seed": per_seed, "metrics_se": metrics_se, "gain": gains,
        "intermediate_key": inter_meta[0]["key"] if inter_meta else None, "intermediate": inter_meta,
        "data": {"target": {"name": target.spec.name, "train": len(target.train),
                            "test": {lang: len(s) for lang, s in target.tests.items()}, "digest": target.digest,
                            "labels": target.labels},
                 "intermediate": {"name": inter.name, "train": inter_meta[0]["examples"] if inter_meta else None}},
        "hyperparameters": {"target": vars(p.target_train), "intermediate": vars(p.intermediate_train)},
        "config_key": config_key(ctx, cell, target.digest),
        "env": {**env_info(ctx.device), **device_info(ctx.device)},
    }
    if cell.domain != "general":
        robustness, note = _robustness(ctx, cell, record, test_enc, preds)
        record.update({"robustness": robustness} if robustness else {"notes": [note]})
    return record


def _robustness(ctx, cell: Cell, record: dict, test_enc, preds) -> tuple[dict | None, str | None]:
    """gain(this domain) - gain(general) per language, from the general cell's record and predictions in the
    same results directory (the grid runs a model-task's general cell first). (None, why) when there are none
    or they come from another configuration (seeds, intermediate models, hyper-parameters)."""
    from harness.results import RecordError, read_record

    general_id = Cell(cell.model, cell.task, "general").id
    path = record_path(ctx.results_dir, general_id)
    try:
        general = read_record(path) if path.exists() else None
    except RecordError as err:
        return None, f"robustness omitted: {err}"
    saved = load_predictions(ctx.results_dir, general_id)
    if general is None or saved is None:
        return None, f"robustness omitted: no record and predictions of {general_id} in {ctx.results_dir}"
    same = ("seeds", "intermediate_key", "hyperparameters")
    if [general.get(k) for k in same] != [record[k] for k in same] or \
            [m["key"] for m in general.get("intermediate", [])] != [m["key"] for m in record["intermediate"]]:
        return None, f"robustness omitted: {path} differs in seeds, intermediate models or hyper-parameters"
    out = {}
    for lang in test_enc:
        if f"y_true/{lang}" in saved:
            base = stats.arms(saved[f"y_true/{lang}"], saved[f"direct/{lang}"], saved[f"intermediate/{lang}"])
            here = stats.arms(test_enc[lang].targets, preds["direct"][lang], preds["intermediate"][lang])
            out[lang] = stats.robustness(base, here, record["main_metric"], stats.stream_seed(cell.id, lang, "robustness"))
    return (out, None) if out else (None, f"robustness omitted: no test language in common with {general_id}")


def config_key(ctx: RunContext, cell: Cell, data_digest: str) -> str:
    """Everything that determines a cell's numbers: a record with the same key can be reused (resume)."""
    import transformers
    p = ctx.profile
    return fingerprint(p.name, p.models[cell.model].describe, data_digest, p.intermediates[cell.task],
                       p.target_train, p.intermediate_train, list(ctx.seeds), precision(ctx.device),
                       torch.__version__, transformers.__version__)


def _save_predictions(ctx, cell, test_enc, preds) -> None:
    """Per-example predictions (for bootstrap comparisons across cells and runs), written atomically."""
    import io
    import os
    import tempfile

    arrays = {f"y_true/{lang}": enc.targets for lang, enc in test_enc.items()}
    for arm, by_lang in preds.items():
        for lang, runs in by_lang.items():
            arrays[f"{arm}/{lang}"] = np.stack(runs)
    path = Path(ctx.results_dir) / "predictions" / f"{cell.id}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())
    os.replace(tmp, path)


def load_predictions(results_dir: Path, cell_id: str) -> dict | None:
    path = Path(results_dir) / "predictions" / f"{cell_id}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
