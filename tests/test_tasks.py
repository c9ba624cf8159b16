"""The task-type table: what differs between task types is looked up there, and a new type is one entry."""
from __future__ import annotations

import pytest

from harness.definitions.grid import GRID_TASKS, TASKS
from harness.definitions.tasks import TASK_TYPES, task_type


def test_every_grid_task_has_an_entry_and_nli_is_pair_classification():
    assert set(GRID_TASKS) < set(TASK_TYPES) and TASKS == tuple(TASK_TYPES)
    nli = task_type("nli")
    assert nli.pair and not nli.regression and nli.columns == ("text_a", "text_b", "label")
    assert (nli.main_metric, nli.num_labels(["a", "b", "c"])) == ("accuracy", 3)
    sts = task_type("similarity")
    assert sts.pair and sts.regression and sts.target == "score" and sts.num_labels(None) == 1
    assert sts.label_set([0.5, 0.1]) is None and task_type("sentiment").label_set(["b", "a", "b"]) == ["a", "b"]


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'topic'; valid: classification, sentiment, similarity, nli"):
        task_type("topic")


def test_a_spec_pair_classification_target_loads_with_its_own_columns(tiny_profile, tmp_path):
    """nli through the --spec path: text_a / text_b / label columns, a closed label set, a new cell row."""
    from helpers import write_jsonl

    from harness.definitions.grid import Cell
    from harness.definitions.specfile import apply_spec
    from harness.running.context import RunContext, load_dataset

    rows = [{"p": f"premise {i}", "h": f"hypothesis {i}", "y": ["entailment", "neutral", "contradiction"][i % 3]}
            for i in range(12)]
    write_jsonl(tmp_path / "nli" / "train.jsonl", rows)
    write_jsonl(tmp_path / "nli" / "test.jsonl", rows[:6])
    spec = tmp_path / "s.toml"
    spec.write_text('[[dataset]]\nname = "toy-nli"\ntask = "nli"\ndomain = "general"\npath = "nli"\n'
                    'text_a = "p"\ntext_b = "h"\nlabel = "y"\n\n'
                    '[[dataset]]\nname = "toy-nli-inter"\ntask = "nli"\ndomain = "general"\nrole = "intermediate"\n'
                    'path = "nli"\ntext_a = "p"\ntext_b = "h"\nlabel = "y"\n')
    profile = apply_spec(tiny_profile, spec, tmp_path)
    assert profile.tasks[-1] == "nli" and profile.skip_reason(Cell("bert", "nli", "general")) is None
    loaded = load_dataset(RunContext(profile, tmp_path / "r", tmp_path / "c", seeds=[0]),
                          profile.targets[("nli", "general")])
    assert loaded.labels == ["contradiction", "entailment", "neutral"] and loaded.train.texts_b[0] == "hypothesis 0"
