"""Profiles: the registry of named grids. `tiny` is code (it generates its corpora); the others are TOML files in
the spec format (harness/definitions/profiles/*.toml), read and validated by harness/definitions/specfile.py like any --spec file."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from harness.definitions.config import DatasetConfig, ModelConfig, Profile, TrainConfig
from harness.definitions.grid import DOMAINS, GRID_TASKS, MODELS
from harness.definitions.specfile import SpecError, apply_spec, read_profile

SHIPPED = Path(__file__).parent  # the shipped profiles: the TOML files next to this module


def tiny(data_dir: Path | None, cache_dir: Path) -> Profile:
    """Offline, CPU, minutes: small random configs and generated corpora (fixtures/generate.py)."""
    from fixtures.generate import LANGUAGES, ensure_corpora

    root = Path(data_dir) if data_dir else ensure_corpora(Path(cache_dir) / "fixtures")
    size = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "vocab": 2000}
    models = {m: ModelConfig(m, m, "tiny", size=size) for m in MODELS}
    text = {"similarity": dict(text="text_a", text_b="text_b", label="score")}
    targets = {
        (t, d): DatasetConfig(name=f"tiny-{t}-{d}", task=t, domain=d, path=f"{t}-{d}/en",
                            cross_lingual={lang: f"{t}-{d}/{lang}/test.jsonl" for lang in LANGUAGES if lang != "en"},
                            **text.get(t, {}))
        for t in GRID_TASKS for d in DOMAINS
    }
    intermediates = {t: DatasetConfig(name=f"tiny-{t}-intermediate", task=t, domain="general", role="intermediate",
                                    path=f"{t}-intermediate/en", **text.get(t, {})) for t in GRID_TASKS}
    return Profile(
        name="tiny", models=models, targets=targets, intermediates=intermediates, data_root=root,
        # random init needs many steps: 12 target epochs let the direct arm learn classification and
        # sentiment; 8 intermediate epochs are where similarity starts to be learnt (xlnet ~0.55 Spearman)
        target_train=TrainConfig(lr=1e-3, epochs=12, batch_size=16, max_length=48),
        intermediate_train=TrainConfig(lr=1e-3, epochs=8, batch_size=32, max_length=48),
        seeds=3, threads=1, train_together=True,  # seeds and arms trained together: the grid 1.5x faster on CPU
        tokenizer_corpus=tuple(f"corpus/{lang}.txt" for lang in LANGUAGES),
    )


def from_file(path: Path, data_dir: Path | None, cache_dir: Path) -> Profile:
    try:
        return read_profile(path, path.stem, data_dir, cache_dir)
    except SpecError as err:
        if data_dir:  # most often a --data-dir that is not the folder the profile's paths are relative to
            raise SpecError(f"{err} (--data-dir {data_dir}: is it the folder the profile's paths are relative "
                            f"to?)") from None
        raise


PROFILES = {"tiny": tiny, **{f.stem: functools.partial(from_file, f) for f in sorted(SHIPPED.glob("*.toml"))}}
# Earlier names of shipped profiles: the same profile under its current name (records and baselines say `offline`).
ALIASES = {"minilm": "offline"}
PROFILES.update({old: PROFILES[new] for old, new in ALIASES.items()})


def canonical(name: str) -> str:
    """A profile's current name (`minilm` -> `offline`)."""
    return ALIASES.get(name, name)


def load_profile(name: str, data_dir: Path | None, cache_dir: Path, spec_file: str | None = None,
                 model_set: str | None = None) -> Profile:
    """The named profile, with a model set (--model-set) and a --spec file's data sets and rows applied
    (validated now)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    profile = PROFILES[name](data_dir, cache_dir)  # an alias loads its profile, named as it is now
    if model_set:
        if model_set not in profile.model_sets:
            raise ValueError(f"unknown --model-set {model_set!r} for profile {name!r}; valid: "
                             f"{', '.join(profile.model_sets) or 'none'}")
        profile = dataclasses.replace(profile, models={**profile.models, **profile.model_sets[model_set]})
    if spec_file:
        profile = apply_spec(profile, spec_file, data_dir, Path(cache_dir))
    return profile
