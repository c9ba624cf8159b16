"""What the cells of a run share, built once and memoised on the run context: validated data sets, tokenizers,
encoded splits (cached on disk) and the intermediate model of a (model, task, seed), trained once and cached
under the cache directory. Used by the cell procedure, the speed benchmarks and the Trainer reference."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.definitions import data as D
from harness.definitions.config import DatasetConfig, Profile
from harness.definitions.grid import Cell
from harness.definitions.tasks import task_type
from harness.running.cache import atomic_dir, cached_encoding, file_digest, fingerprint, tokenizer_digest
from harness.running.devices import precision
from harness.running.grouped import STREAM
from harness.running.models import body_state, build_model, cell_heads, load_tokenizer
from harness.running.train import train


@dataclass
class RunContext:
    profile: Profile
    results_dir: Path
    cache_dir: Path
    seeds: list
    device: str = "cpu"
    rerun: bool = False
    compile: bool = False  # torch.compile the model for training (pytest --compile)
    tune: bool = False  # per-arm selection on validation data (the profile's default; pytest --tune / --no-tune)
    ensemble: bool = False  # untuned cells: seeds and arms (and the seeds' intermediate models) grouped (--ensemble)
    _memo: dict = field(default_factory=dict)

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


@dataclass
class Loaded:
    """A data set's splits after validation: train, the test split per language, label set and sizes; with
    tuning, the validation split and where it came from (harness.definitions.data.validation_split)."""
    spec: DatasetConfig
    train: D.Split
    tests: dict
    labels: list | None
    digest: str
    validation: D.Split | None = None
    validation_source: str | None = None


def load_dataset(ctx: RunContext, spec: DatasetConfig, with_tests: bool = True,
                 validation_fraction: float | None = None) -> Loaded:
    def make():
        root = ctx.profile.data_root
        train_split = D.load_split(spec, root, "train", cache_dir=ctx.cache_dir / "datasets",
                                   limit=spec.max_train)
        labels = task_type(spec.task).label_set(train_split.labels)
        tests = {}
        if with_tests:
            tests[spec.language] = D.load_split(spec, root, "test", labels, cache_dir=ctx.cache_dir / "datasets",
                                                limit=spec.max_test)
            for lang, rel in sorted(spec.cross_lingual.items()):
                tests[lang] = D.load_split(spec, root, "test", labels, file=D.cross_lingual_file(spec, root, rel),
                                           cache_dir=ctx.cache_dir / "datasets", limit=spec.max_test)
        files = [train_split.file] + [s.file for s in tests.values()]
        digest = fingerprint(spec, [file_digest(Path(f)) if Path(f).is_file() else f for f in files])
        if validation_fraction is None:
            return Loaded(spec, train_split, tests, labels, digest)
        train_split, val, source = D.validation_split(spec, root, train_split, labels, validation_fraction,
                                                      cache_dir=ctx.cache_dir / "datasets")
        return Loaded(spec, train_split, tests, labels, digest, val, source)
    return ctx.memo(("data", repr(spec), with_tests, validation_fraction), make)


def tokenizer_for(ctx: RunContext, model_name: str):
    spec = ctx.profile.models[model_name]
    corpus = [Path(ctx.profile.data_root) / f for f in ctx.profile.tokenizer_corpus]
    return ctx.memo(("tok", model_name), lambda: load_tokenizer(spec, corpus, ctx.cache_dir))


def _encode(ctx, tokenizer, model_name, split: D.Split, max_length: int, labels, separate: bool = False):
    # id(split): a carved train and test split share their file (splits live as long as ctx, in its memo);
    # separate: the two texts of a pair tokenised on their own (a bi-encoder's input, data.encode)
    return ctx.memo(("enc", model_name, split.file, len(split), id(split), max_length, separate),
                    lambda: cached_encoding(ctx.cache_dir, tokenizer, split, max_length, labels, separate))


def intermediate_body(ctx: RunContext, cell: Cell, seed: int, together=None) -> tuple[dict, dict]:
    """The encoder after intermediate training for (model, task, seed): trained once, cached on disk.

    Returns the body weights and metadata (key, whether it was trained by this call, seconds, examples/s).
    `together(models, data=, seeds=) -> infos` (harness.running.ensemble.train_together with the rest bound): the
    run's seeds train their intermediate models as one group (its own cache key). The first seed of the group whose
    model is not cached trains them all and, while it holds its lock, writes the folders of the seeds after it
    (locks are always taken in seed order, so no two processes deadlock): a worker waiting on any of them finds
    them all; its `seconds` are the group's.
    """
    from safetensors.torch import load_file, save_file

    p = ctx.profile
    spec = p.models[cell.model]
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)
    tok = tokenizer_for(ctx, cell.model)
    group = list(ctx.seeds) if together is not None else None
    keys = {s: intermediate_key(ctx, cell, s, group) for s in group or [seed]}
    folder_of = lambda s: ctx.cache_dir / "intermediate" / f"{cell.model}-{cell.task}-s{s}-{keys[s]}"  # noqa: E731
    trained = {}
    pooling, head = cell_heads(p, cell)

    def write(tmp: Path, model, info: dict, s: int) -> None:
        save_file(body_state(model), str(tmp / "body.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"key": keys[s], **info}, indent=1))

    def build(tmp: Path):
        num_labels = task_type(cell.task).num_labels(inter.labels)
        enc = _encode(ctx, tok, cell.model, inter.train, p.intermediate_train.max_length, inter.labels,
                      separate=head == "bi")
        seeds = group or [seed]
        models = [build_model(spec, tok, num_labels, p.intermediate_train.max_length, s, pooling, head)
                  for s in seeds]
        if together is None:
            infos = [train(models[0], enc, p.intermediate_train, seed, ctx.device, tok.pad_token_id,
                           tok.padding_side == "left", desc=f"{cell.model}-{cell.task} intermediate s{seed}",
                           compile=ctx.compile)]
        else:
            infos = together(models, data=enc, seeds=seeds)
        for s, model, info in zip(seeds, models, infos):
            if s == seed:
                write(tmp, model, info, s)
            elif seeds.index(s) > seeds.index(seed):
                atomic_dir(folder_of(s), lambda t, m=model, i=info, s=s: write(t, m, i, s))
        trained.update(infos[seeds.index(seed)], seconds=sum(i["seconds"] for i in infos))

    folder = atomic_dir(folder_of(seed), build)
    meta = {"key": keys[seed], "trained_here": bool(trained),
            "seconds": trained.get("seconds", 0.0), "examples_per_s": trained.get("examples_per_s"),
            "examples": len(inter.train), **({"group": group} if group else {})}
    return load_file(str(folder / "body.safetensors")), meta


def intermediate_key(ctx: RunContext, cell: Cell, seed: int, group: list | None = None) -> str:
    """The cache key of a (model, task, seed) intermediate model: a function of the configuration only (`group`:
    the seeds it was trained together with, harness.running.ensemble)."""
    import transformers
    p = ctx.profile
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)
    return fingerprint("intermediate", p.models[cell.model].describe, inter.digest, p.intermediate_train, seed,
                       tokenizer_digest(tokenizer_for(ctx, cell.model)), precision(ctx.device), torch.__version__,
                       transformers.__version__, *heads_key(p, cell),
                       *([{"ensemble": group, "dropout": STREAM}] if group else []))


def heads_key(profile: Profile, cell: Cell) -> list:
    """The cell's pooling and similarity head as a part of cache and config keys, only where they differ from
    the seed recipe ([CLS] pooling, cross-encoder), so keys of that recipe stay as they were."""
    heads = cell_heads(profile, cell)
    return [] if heads == ("cls", "cross") else [{"pooling": heads[0], "similarity_head": heads[1]}]

