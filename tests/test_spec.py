"""--spec files: parsing, validation at load time (one-line errors naming file and key), effect on a profile."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    CONTRACTS,
    PAIRS,
    SHARED_DATA,
    needs_shared_data,
    run_pytest,
    spec_error,
    target_entry,
    write_jsonl,
    write_spec,
    write_table,
)

from harness.definitions.grid import Cell
from harness.definitions.specfile import apply_spec


def test_target_adds_a_domain_and_intermediate_replaces_the_task(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml",
                      target_entry(cross_lingual={"de": "contracts-de/test.jsonl"}, max_train=6),
                      dict(name="pairs", task="similarity", domain="general", role="intermediate", format="tsv",
                           path="pairs", text_a="a", text_b="b", score="sim"))
    profile = apply_spec(tiny_profile, spec, data)
    target = profile.targets[("classification", "finance")]
    assert target.path == str((data / "contracts").resolve()) and target.max_train == 6
    assert target.cross_lingual == {"de": str((data / "contracts-de/test.jsonl").resolve())}
    assert (target.text, target.label, target.source) == ("text", "label", str(spec))
    inter = profile.intermediates["similarity"]
    assert (inter.text, inter.text_b, inter.label, inter.format) == ("a", "b", "sim", "tsv")
    assert profile.domains[-1] == "finance" and Cell("bert", "classification", "finance") in profile.cells()
    assert profile.skip_reason(Cell("bert", "classification", "finance")) is None
    assert "no sentiment data set for domain 'finance'" in profile.skip_reason(Cell("bert", "sentiment", "finance"))
    assert profile.targets[("sentiment", "general")] == tiny_profile.targets[("sentiment", "general")]


def test_target_replaces_an_existing_cell(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", target_entry(domain="legal"))
    profile = apply_spec(tiny_profile, spec, data)
    assert profile.targets[("classification", "legal")].name == "contracts"
    assert profile.domains == tiny_profile.domains


def test_paths_are_relative_to_the_spec_folder_without_data_dir(tiny_profile, data):
    spec = write_spec(data / "s.toml", target_entry())
    assert apply_spec(tiny_profile, spec, None).targets[("classification", "finance")].path == \
        str((data / "contracts").resolve())


def test_a_cell_reads_a_spec_target(tiny_profile, data, tmp_path):
    from harness.running.context import RunContext, load_dataset

    spec = write_spec(tmp_path / "s.toml", target_entry(cross_lingual={"de": "contracts-de/test.jsonl"}))
    profile = apply_spec(tiny_profile, spec, data)
    ctx = RunContext(profile, tmp_path / "results", tmp_path / "cache", seeds=[0])
    loaded = load_dataset(ctx, profile.targets[("classification", "finance")])
    assert (len(loaded.train), len(loaded.tests["en"]), len(loaded.tests["de"])) == (8, 4, 4)
    assert loaded.labels == ["fair", "unfair"]


@pytest.mark.parametrize("changes, key, words", [
    (dict(colour="blue"), "colour", "unknown key"),
    (dict(task="topic"), "task", "unknown task 'topic'"),
    (dict(role="teacher"), "role", "unknown role 'teacher'"),
    (dict(format="xml"), "format", "unknown format 'xml'"),
    (dict(domain="Legal Texts"), "domain", "lower-case"),
    (dict(score="s"), "score", "does not apply to classification"),
    (dict(max_train=0), "max_train", "positive integer"),
    (dict(train_fraction=1.5), "train_fraction", "between 0 and 1"),
    (dict(path="nowhere"), "path", "folder not found"),
    (dict(label="verdict"), "label", "column missing"),
    (dict(text="body"), "text", "column missing"),
    (dict(cross_lingual={"de": "contracts-de/nope.jsonl"}), "cross_lingual.de", "file not found"),
    (dict(splits={"dev": "x.jsonl"}), "splits.dev", "unknown split"),
    (dict(cross_lingual={"en": "contracts-de/test.jsonl"}), "cross_lingual.en", "own language"),
    (dict(role="intermediate", cross_lingual={"de": "contracts-de/test.jsonl"}), "cross_lingual", "never tested"),
])
def test_bad_entries_name_the_key(tiny_profile, data, tmp_path, changes, key, words):
    message = spec_error(tiny_profile, write_spec(tmp_path / "s.toml", target_entry(**changes)), data)
    assert f"[[dataset]] 1 (contracts) key '{key}'" in message and words in message


def test_missing_required_key(tiny_profile, data, tmp_path):
    entry = target_entry()
    del entry["task"]
    assert "key 'task': missing" in spec_error(tiny_profile, write_spec(tmp_path / "s.toml", entry), data)


def test_label_set_differing_between_splits(tiny_profile, data, tmp_path):
    write_jsonl(data / "contracts" / "test.jsonl", CONTRACTS[:3] + [{"text": "odd clause", "label": "void"}])
    message = spec_error(tiny_profile, write_spec(tmp_path / "s.toml", target_entry()), data)
    assert "key 'label': label set differs between splits" in message
    assert "test.jsonl: row 4 field 'label': unknown label 'void'" in message


def test_non_numeric_score(tiny_profile, data, tmp_path):
    rows = [list(r.values()) for r in PAIRS[:2]] + [["x", "y", "very similar"]]
    write_table(data / "pairs" / "test.tsv", ["a", "b", "sim"], rows, "\t")
    spec = write_spec(tmp_path / "s.toml", dict(name="pairs", task="similarity", domain="general", format="tsv",
                                                path="pairs", text_a="a", text_b="b", score="sim"))
    message = spec_error(tiny_profile, spec, data)
    assert "(pairs) key 'score'" in message and "row 3 field 'sim': score must be a number" in message


def test_similarity_rejects_classification_columns(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", dict(name="pairs", task="similarity", domain="general", format="tsv",
                                                path="pairs", label="sim"))
    assert "key 'label': does not apply to similarity (its columns: text_a, text_b, score)" in \
        spec_error(tiny_profile, spec, data)


def test_two_targets_for_one_cell(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", target_entry(), target_entry(name="again"))
    assert "[[dataset]] 2 (again) key 'domain': a second target" in spec_error(tiny_profile, spec, data)


def test_file_level_errors(tiny_profile, data, tmp_path):
    assert "spec file not found" in spec_error(tiny_profile, tmp_path / "absent.toml", data)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[dataset]\nname = 1\n")
    assert "not valid TOML" in spec_error(tiny_profile, bad, data)
    top = write_spec(tmp_path / "top.toml", target_entry(), extra="\n[training]\nlr = 1\n")
    assert "key 'training': unknown top-level key" in spec_error(tiny_profile, top, data)


def test_models_table(tiny_profile, data, tmp_path):
    (data / "checkpoints" / "mine").mkdir(parents=True)
    spec = write_spec(tmp_path / "s.toml", target_entry(),
                      extra='\n[models]\nbert = "checkpoints/mine"\n'
                            'roberta = {source = "xlm-roberta-base", revision = "abc"}\n')
    models = apply_spec(tiny_profile, spec, data).models
    assert models["bert"].source == str((data / "checkpoints" / "mine").resolve())
    assert (models["roberta"].source, models["roberta"].revision) == ("xlm-roberta-base", "abc")
    assert models["xlnet"] == tiny_profile.models["xlnet"]
    wrong = write_spec(tmp_path / "w.toml", target_entry(), extra='\n[models]\ngpt = "gpt2"\n')
    assert "[models] key 'gpt': unknown model row" in spec_error(tiny_profile, wrong, data)


@pytest.mark.slow
@pytest.mark.subprocess
def test_plugin_turns_a_bad_spec_into_a_usage_error(data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", target_entry(task="topic"))
    run = run_pytest("bench", "--collect-only", "-q", "-p", "no:hypothesispytest", f"--spec={spec}",
                     f"--cache-dir={tmp_path / 'cache'}", f"--results-dir={tmp_path / 'results'}", timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr
    assert f"{spec}: [[dataset]] 1 (contracts) key 'task': unknown task 'topic'" in run.stderr
    assert "Traceback" not in run.stderr


@needs_shared_data
@pytest.mark.parametrize("doc", ["README.md", "docs/data.md"])
def test_documented_worked_example(tmp_path, doc):
    """The example spec of the README (minimal) and of docs/data.md (full) applies to the minilm profile as
    documented."""
    import re

    from harness.definitions.profiles import load_profile

    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    spec = tmp_path / "my-data.toml"
    spec.write_text(re.search(r"```toml\n(# my-data\.toml\n.*?)```", text, re.S).group(1), encoding="utf-8")
    profile = load_profile("minilm", SHARED_DATA, tmp_path, spec_file=str(spec))
    assert profile.domains[-1] == "products"
    assert profile.skip_reason(Cell("bert", "sentiment", "products")) is None
    if doc == "docs/data.md":
        legal = profile.targets[("classification", "legal")]
        assert (legal.name, legal.language, sorted(legal.cross_lingual)) == ("unfair_tos-de", "de", ["en", "it", "pl"])


def test_profile_tables_in_a_spec(tiny_profile, data, tmp_path):
    """[train.*], [missing], [model_sets] and {skip = ...} rows: the tables the shipped profiles are written in."""
    spec = write_spec(tmp_path / "s.toml", target_entry(), extra=(
        '\n[train.intermediate]\nepochs = 1\nlr = 0.002\n'
        '\n[missing]\nsentiment-finance = "no finance tweets yet"\n'
        '\n[models]\nxlnet = { skip = "not today" }\n'
        '\n[model_sets.other]\nbert = { source = "checkpoints", revision = "abc" }\n'))
    (data / "checkpoints").mkdir()
    profile = apply_spec(tiny_profile, spec, data)
    assert (profile.intermediate_train.epochs, profile.intermediate_train.lr) == (1, 0.002)
    assert profile.intermediate_train.batch_size == tiny_profile.intermediate_train.batch_size
    assert profile.skip_reason(Cell("bert", "sentiment", "finance")) == "no finance tweets yet"
    assert profile.skip_reason(Cell("xlnet", "classification", "general")) == "not today"
    assert profile.model_sets["other"]["bert"].source == str((data / "checkpoints").resolve())


@pytest.mark.parametrize("extra, words", [
    ("\n[train.target]\nepochs = 1.5\n", "[train.target] key 'epochs': must be a non-negative int"),
    ("\n[train.target]\nwarmup = 0.1\n", "[train.target] key 'warmup': unknown hyper-parameter"),
    ("\n[train.finetune]\nepochs = 1\n", "expected the tables [train.target] and [train.intermediate]"),
    ("\n[missing]\ntranslation-legal = \"x\"\n", "[missing] key 'translation-legal'"),
    ("\n[models]\nbert = { source = \"x\", skip = \"y\" }\n", "[models] key 'bert': must be"),
    ("\n[profile]\nseeds = 2\n", "key 'profile': unknown top-level key"),
])
def test_bad_profile_tables_name_the_key(tiny_profile, data, tmp_path, extra, words):
    assert words in spec_error(tiny_profile, write_spec(tmp_path / "s.toml", target_entry(), extra=extra), data)


@pytest.mark.parametrize("changes, key, words", [
    (dict(layout="folders"), "layout", "for format hf only"),
    (dict(format="hf", layout="tree"), "layout", "must be one of configs, folders"),
    (dict(sizes={"train": 0}), "sizes", "positive integers"),
    (dict(sizes={"dev": 5}), "sizes", "positive integers"),
])
def test_hub_keys_are_checked(tiny_profile, data, tmp_path, changes, key, words):
    message = spec_error(tiny_profile, write_spec(tmp_path / "s.toml", target_entry(**changes)), data)
    assert f"key '{key}'" in message and words in message


def test_a_margins_table_sets_the_equivalence_margin_per_metric(tiny_profile, data, tmp_path):
    from harness.definitions.metrics import EQUIVALENCE_MARGIN, equivalence_margin

    spec = write_spec(tmp_path / "s.toml", target_entry(), extra="\n[margins]\naccuracy = 0.05\nspearman = 0\n")
    profile = apply_spec(tiny_profile, spec, data)
    assert profile.margins == {"accuracy": 0.05, "spearman": 0.0}
    assert equivalence_margin("accuracy", profile.margins) == 0.05
    assert equivalence_margin("macro_f1", profile.margins) == EQUIVALENCE_MARGIN == 0.02
    assert equivalence_margin("accuracy", profile.margins, override=0.01) == 0.01  # pytest --margin wins


@pytest.mark.parametrize("table, message", [
    ("[margins]\nacuracy = 0.05\n", "[margins] key 'acuracy': unknown metric"),
    ("[margins]\naccuracy = 1.5\n", "[margins] key 'accuracy': must be a number in [0, 1), got 1.5"),
    ('[margins]\naccuracy = "small"\n', "[margins] key 'accuracy': must be a number in [0, 1), got 'small'")])
def test_a_bad_margins_table_is_one_line(tiny_profile, data, tmp_path, table, message):
    spec = write_spec(tmp_path / "s.toml", target_entry(), extra="\n" + table)
    assert message in spec_error(tiny_profile, spec, data)
