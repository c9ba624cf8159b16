"""The `paper` profile's exact hub load path, offline: for every hub data set it names, a local copy of the hub
repository's layout (config and split folder names, parquet files, columns and dtypes; written here into tmp_path)
is loaded through the same `format = "hf"` code as a real download, with the local folder where the hub id would
be. A wrong config, split or column name in harness/definitions/profiles/paper.toml fails here, not on the first GPU run.

HUB records each repository's layout (a label column: ("class", names) for a ClassLabel, (dtype, names) for
plain string or integer categories) at the commit the profile pins (the sources are named in paper.toml).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.definitions import data as D
from harness.definitions.profiles import load_profile
from harness.definitions.tasks import task_type

S, I, F = "string", "int64", "float64"
XNLI_LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
NLI = ("entailment", "neutral", "contradiction")


def _card(config: str, splits: tuple, pattern: str) -> dict:
    """A config the data set card declares: split -> file (pattern over {config} and {split})."""
    return {config: {s: pattern.format(config=config, split=s) for s in splits}}


def _export(configs, splits) -> dict:
    """A parquet export (refs/convert/parquet): CONFIG/SPLIT/0000.parquet, no card."""
    return {c: {s: f"{c}/{s}/0000.parquet" for s in splits} for c in configs}


HUB = {
    "mteb/sib200": dict(layout="folders", files=_export(
        ("eng_Latn", "arb_Arab", "deu_Latn", "spa_Latn", "fra_Latn", "hin_Deva", "ita_Latn", "pol_Latn", "por_Latn",
         "swh_Latn", "tur_Latn", "zho_Hans"), ("train", "validation", "test")),
        columns={"index_id": I, "text": S, "category": (S, ["science/technology", "travel", "politics", "sports",
                                                               "health", "entertainment", "geography"])}),
    "coastalcph/lex_glue": dict(layout="configs", files=_card(
        "ledgar", ("train", "validation", "test"), "{config}/{split}-00000-of-00001.parquet"),
        columns={"text": S, "label": ("class", [f"provision_{i}" for i in range(100)])}),
    "cardiffnlp/tweet_sentiment_multilingual": dict(layout="folders", files=_export(
        ("english", "arabic", "german", "spanish", "french", "hindi", "italian", "portuguese"),
        ("train", "validation", "test")),
        columns={"text": S, "label": ("class", ["negative", "neutral", "positive"])}),
    "PhilipMay/stsb_multi_mt": dict(layout="configs", files={
        k: v for lang in ("en", "de", "es", "fr", "it", "nl", "pl", "pt", "ru", "zh")
        for k, v in _card(lang, ("train", "dev", "test"), "{config}/{split}-00000-of-00001.parquet").items()},
        columns={"sentence1": S, "sentence2": S, "similarity_score": "float32"}),
    "mteb/biosses-sts": dict(layout="folders", files=_export(("default",), ("test",)),
                             columns={"sentence1": S, "sentence2": S, "score": F}),
    "facebook/xnli": dict(layout="configs", files={
        k: v for lang in XNLI_LANGS
        for k, v in _card(lang, ("train", "validation", "test"), "{config}/{split}-00000-of-00001.parquet").items()},
        columns={"premise": S, "hypothesis": S, "label": ("class", list(NLI))}),
    "stanfordnlp/imdb": dict(layout="folders", files=_export(("plain_text",), ("train", "test", "unsupervised")),
                             columns={"text": S, "label": ("class", ["neg", "pos"])}),
    "fancyzhx/yelp_polarity": dict(layout="folders", files=_export(("plain_text",), ("train", "test")),
                                   columns={"text": S, "label": ("class", ["1", "2"])}),
    "mteb/sickr-sts": dict(layout="folders", files=_export(("default",), ("test",)),
                           columns={"sentence1": S, "sentence2": S, "score": F}),
    "nyu-mll/multi_nli": dict(layout="configs", files=_card(
        "default", ("train", "validation_matched", "validation_mismatched"), "data/{split}-00000-of-00001.parquet"),
        columns={"promptID": "int32", "pairID": S, "premise": S, "hypothesis": S, "genre": S,
                 "label": ("class", list(NLI))}),
}


def _rows(columns: dict, n: int = 30) -> dict:
    out = {}
    for name, dtype in columns.items():
        if isinstance(dtype, tuple):  # a label column: every class in every split, whatever the carve
            ids = [i % min(3, len(dtype[1])) for i in range(n)]
            out[name] = [dtype[1][i] for i in ids] if dtype[0] == S else ids
        elif dtype == S:
            out[name] = [f"{name} text number {i}" for i in range(n)]
        else:
            out[name] = [float(i % 6) if dtype.startswith("float") else i for i in range(n)]
    return out


def write_repo(folder: Path, hub: dict) -> None:
    """The repository's files: parquet per config and split with the hub's columns and dtypes (and the card's
    `configs` table for data sets that declare their configs)."""
    from datasets import ClassLabel, Dataset, Features, Value, disable_progress_bars

    disable_progress_bars()
    features = Features({name: ClassLabel(names=d[1]) if isinstance(d, tuple) and d[0] == "class" else
                         Value(d[0] if isinstance(d, tuple) else d) for name, d in hub["columns"].items()})
    for config, splits in hub["files"].items():
        for split, rel in splits.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Dataset.from_dict(_rows(hub["columns"]), features=features).to_parquet(str(folder / rel))
    if hub["layout"] == "configs":
        lines = ["---", "configs:"]
        for config, splits in hub["files"].items():
            lines += [f"- config_name: {config}", "  data_files:"]
            lines += [f"  - split: {s}\n    path: {rel}" for s, rel in splits.items()]
        (folder / "README.md").write_text("\n".join(lines + ["---", ""]), encoding="utf-8")


def local(spec, root: Path):
    """The data set with every `HUB_ID[:CONFIG]` pointing at its local copy under root."""
    def move(ref: str) -> str:
        hub_id, sep, config = ref.partition(":")
        return f"{root / hub_id}{sep}{config}"
    return dataclasses.replace(spec, path=move(spec.path),
                               cross_lingual={k: move(v) for k, v in spec.cross_lingual.items()})


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The paper profile and a folder holding a local copy of every hub repository it names."""
    profile = load_profile("paper", None, tmp_path_factory.mktemp("cache"))
    root = tmp_path_factory.mktemp("hub")
    specs = list(profile.targets.values()) + list(profile.intermediates.values())
    for hub_id in sorted({s.path.partition(":")[0] for s in specs}):
        assert hub_id in HUB, f"{hub_id}: add its layout to HUB (a fixture for every hub data set of the profile)"
        write_repo(root / hub_id, HUB[hub_id])
    return profile, root, specs


def load_all(spec, root: Path, cache: Path) -> dict:
    """Every split a cell reads, through harness.definitions.data (the `format = "hf"` path)."""
    spec = local(spec, root)
    train = D.load_split(spec, Path("."), "train", cache_dir=cache)
    if spec.role == "intermediate":
        return {"train": train}
    labels = task_type(spec.task).label_set(train.labels)
    out = {"train": train, spec.language: D.load_split(spec, Path("."), "test", labels, cache_dir=cache)}
    for lang, ref in spec.cross_lingual.items():
        out[lang] = D.load_split(spec, Path("."), "test", labels, file=ref, cache_dir=cache)
    return out


def test_every_hub_data_set_loads_through_the_hf_path(hub, tmp_path):
    profile, root, specs = hub
    assert len(specs) == 10
    for spec in specs:
        assert spec.format == "hf" and spec.layout == HUB[spec.path.partition(":")[0]]["layout"], spec.name
        splits = load_all(spec, root, tmp_path / "cache")
        train = splits["train"]
        assert len(train) > 0 and all(isinstance(t, str) and t for t in train.texts), spec.name
        assert (train.texts_b is not None) == task_type(spec.task).pair, spec.name
        if task_type(spec.task).regression:
            assert all(isinstance(v, float) for v in train.labels), spec.name
        else:
            classes = len(HUB[spec.path.partition(":")[0]]["columns"][spec.label][1])
            assert len(set(train.labels)) == min(3, classes), spec.name
        if spec.role == "target":
            assert set(splits) == {"train", spec.language, *spec.cross_lingual}, spec.name


def test_xnli_trains_on_validation_and_tests_zero_shot_in_14_languages(hub, tmp_path):
    profile, root, _ = hub
    xnli = profile.targets[("nli", "general")]
    assert xnli.splits == {"train": "validation"} and xnli.train_fraction is None
    assert sorted(xnli.cross_lingual) == sorted(set(XNLI_LANGS) - {"en"})
    assert profile.intermediates["nli"].name == "multi_nli"
    splits = load_all(xnli, root, tmp_path / "cache")
    assert len(splits["train"]) == 30 and len(splits["en"]) == 30  # whole splits: no carving


@pytest.mark.parametrize("change, words", [
    (dict(label="labels"), "field 'labels': column missing"),
    (dict(text="hypothesis_text"), "column missing"),
    (dict(splits={"train": "dev"}), "cannot load hub data set"),
    (dict(path="facebook/xnli:english"), "cannot load hub data set"),
])
def test_a_wrong_name_fails_the_fixture(hub, tmp_path, change, words):
    """The check can fail: one wrong column, split or config of XNLI is an error naming the data set."""
    profile, root, _ = hub
    wrong = dataclasses.replace(profile.targets[("nli", "general")], **change)
    with pytest.raises(D.DataError, match=words):
        load_all(wrong, root, tmp_path / "cache")


def test_every_revision_is_a_pinned_commit_or_declared_unverified():
    """40-hex commits everywhere: a data set whose commit no hub page confirmed is left out of the grid (paper.toml)."""
    import re

    profile = load_profile("paper", None, Path("unused"))
    models = list(profile.models.values()) + list(profile.model_sets["multilingual"].values())
    assert all(re.fullmatch(r"[0-9a-f]{40}", m.revision) for m in models if not m.skip_reason)
    specs = list(profile.targets.values()) + list(profile.intermediates.values())
    assert specs and all(s.revision and re.fullmatch(r"[0-9a-f]{40}", s.revision) for s in specs)
