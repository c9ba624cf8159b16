"""The run context: what the cells of a run share, built once and memoised on it (validated data sets, tokenizers,
encoded splits, cached on disk). Used by the cell procedure, the intermediate models, the speed benchmarks and the
Trainer reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.definitions import data as D
from harness.definitions.config import DatasetConfig, Profile
from harness.definitions.tasks import task_type
from harness.fileio import file_digest, fingerprint
from harness.running.cache import cached_encoding
from harness.training.tokenizers import load_tokenizer


@dataclass
class RunContext:
    """One run's settings (profile, folders, seeds, device, switches) and its memo of what its cells share."""
    profile: Profile
    results_dir: Path
    cache_dir: Path
    seeds: list
    device: str = "cpu"
    rerun: bool = False
    compile: bool = False  # torch.compile the model for training (pytest --compile)
    tune: bool = False  # per-arm selection on validation data (the profile's default; pytest --tune / --no-tune)
    train_together: bool = False  # untuned cells: seeds and arms (and the seeds' intermediate models) trained as one
    # grouped model (--train-together)
    calibration: bool = False  # A/A: the intermediate arm is a second direct arm with its own seeds (--calibration)
    margin: float | None = None  # the equivalence margin of every verdict (--margin; None: the profile's per metric)
    auto_seeds: int | None = None  # --seeds auto:MAX: `seeds` first, then rounds up to MAX while undecided
    _memo: dict = field(default_factory=dict)

    def memo(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]


@dataclass
class Loaded:
    """A data set's splits after validation: train, the test split per language, label set and sizes; with
    tuning, the validation split and where it came from (harness.definitions.data.validation_split)."""
    dataset: DatasetConfig
    train: D.Split
    tests: dict
    labels: list | None
    digest: str
    validation: D.Split | None = None
    validation_source: str | None = None


def load_dataset(ctx: RunContext, dataset: DatasetConfig, with_tests: bool = True,
                 validation_fraction: float | None = None) -> Loaded:
    def make():
        root = ctx.profile.data_root
        train_split = D.load_split(dataset, root, "train", cache_dir=ctx.cache_dir / "datasets",
                                   limit=dataset.max_train)
        labels = task_type(dataset.task).label_set(train_split.labels)
        tests = {}
        if with_tests:
            tests[dataset.language] = D.load_split(dataset, root, "test", labels, cache_dir=ctx.cache_dir / "datasets",
                                                limit=dataset.max_test)
            for lang, rel in sorted(dataset.cross_lingual.items()):
                tests[lang] = D.load_split(dataset, root, "test", labels, file=D.cross_lingual_file(dataset, root, rel),
                                           cache_dir=ctx.cache_dir / "datasets", limit=dataset.max_test)
        files = [train_split.file] + [s.file for s in tests.values()]
        digest = fingerprint(dataset, [file_digest(Path(f)) if Path(f).is_file() else f for f in files])
        if validation_fraction is None:
            return Loaded(dataset, train_split, tests, labels, digest)
        train_split, val, source = D.validation_split(dataset, root, train_split, labels, validation_fraction,
                                                      cache_dir=ctx.cache_dir / "datasets")
        return Loaded(dataset, train_split, tests, labels, digest, val, source)
    return ctx.memo(("data", repr(dataset), with_tests, validation_fraction), make)


def tokenizer_for(ctx: RunContext, model_name: str):
    row = ctx.profile.models[model_name]
    corpus = [Path(ctx.profile.data_root) / f for f in ctx.profile.tokenizer_corpus]
    return ctx.memo(("tok", model_name), lambda: load_tokenizer(row, corpus, ctx.cache_dir))


def encode(ctx, tokenizer, model_name, split: D.Split, max_length: int, labels, separate: bool = False):
    """A split tokenised for a model (data.encode), memoised on the run and cached on disk; the model row's
    `text_prefix` before every text (data.with_prefix: the cache key hashes the prefixed texts)."""
    # id(split): a carved train and test split share their file (splits live as long as ctx, in its memo);
    # separate: the two texts of a pair tokenised on their own (a bi-encoder's input, data.encode)
    prefix = ctx.profile.models[model_name].text_prefix
    return ctx.memo(("enc", model_name, split.file, len(split), id(split), max_length, separate),
                    lambda: cached_encoding(ctx.cache_dir, tokenizer, D.with_prefix(split, prefix), max_length, labels,
                                            separate))
