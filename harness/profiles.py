"""Profiles: the concrete models, data sets and hyper-parameters behind the grid's names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness.grid import DOMAINS, MODELS, TASKS, Cell


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

    @property
    def domains(self) -> tuple:
        extra = sorted({d for (_, d) in self.targets} - set(DOMAINS))
        return DOMAINS + tuple(extra)

    def cells(self) -> list[Cell]:
        return [Cell(m, t, d) for m in MODELS for t in TASKS for d in self.domains]


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
        target_train=TrainConfig(lr=1e-3, epochs=6, batch_size=32, max_length=48),
        intermediate_train=TrainConfig(lr=1e-3, epochs=2, batch_size=32, max_length=48),
        seeds=3, threads=1,
        tokenizer_corpus=tuple(f"corpus/{lang}.txt" for lang in LANGUAGES),
    )


PROFILES = {"tiny": tiny}


def load_profile(name: str, data_dir: Path | None, cache_dir: Path, spec: str | None = None) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    profile = PROFILES[name](data_dir, cache_dir)
    if spec:
        raise ValueError(f"--spec {spec}: spec files are not supported yet")
    return profile
