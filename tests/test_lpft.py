"""LP-FT (harness/running/probe.py): `head_init = "probe"` starts a classification head's output layer from the
logistic regression of what that layer reads; the settings, their one-line errors, and what a cell records."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import TOY, spec_error, target_entry, toy_split, write_spec
from sklearn.linear_model import LogisticRegression

from harness.definitions.grid import Cell
from harness.definitions.specfile import SpecError, read_profile
from harness.running import probe as lpft
from harness.running.heads import cell_head_init
from harness.training.loop import predict
from harness.training.models import build_model


def _encoded(tok, labels=("a", "b"), n=96, seed=0):
    from harness.definitions.data import encode

    split = toy_split(n, seed)
    return encode(tok, split, TOY.max_length, list(labels))


@pytest.mark.parametrize("family, pooling, name", [
    ("bert", "cls", "classifier"), ("roberta", "cls", "classifier.out_proj"), ("xlnet", "cls", "logits_proj"),
    ("bert", "mean", "classifier"),  # PooledModel
])
def test_the_output_layer_is_the_one_that_produces_the_logits(tiny_profile, tiny_tokenizers, family, pooling, name):
    tok = tiny_tokenizers[family]
    model = build_model(tiny_profile.models[family], tok, 3, TOY.max_length, 0, pooling)
    found, layer = lpft.output_layer(model, 3)
    assert found == name and layer.out_features == 3
    rows = _encoded(tok, n=8)
    batch = {"input_ids": torch.tensor(np.array([rows.input_ids[0]]))}
    with torch.no_grad():  # the layer's output is the model's logits
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        logits = model.eval()(**batch).logits
        handle.remove()
    assert torch.equal(seen[0], logits)


@pytest.mark.parametrize("classes, num_labels", [((0, 1), 2), ((0, 1, 2), 3), ((0, 2), 3), ((1, 2, 3), 4)])
def test_the_layer_from_a_fit_gives_the_fit_s_probabilities(classes, num_labels):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    y = np.array(classes)[rng.integers(0, len(classes), 120)]
    x[np.arange(120), y % 5] += 2.0  # separable enough for a non-trivial fit
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    weight, bias = lpft.logits_layer(clf.coef_, clf.intercept_, clf.classes_, num_labels)
    probs = torch.softmax(torch.from_numpy(x.astype(np.float32) @ weight.T + bias), dim=-1).numpy()
    np.testing.assert_allclose(probs[:, list(classes)], clf.predict_proba(x), atol=1e-4)
    assert (probs.argmax(1) == clf.predict(x)).all()
    absent = sorted(set(range(num_labels)) - set(classes))
    assert probs[:, absent].max(initial=0) < 1e-3  # a class the rows lack is never predicted


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_a_probe_started_model_predicts_what_the_probe_predicts(tiny_profile, tiny_tokenizers, family):
    tok = tiny_tokenizers[family]
    pad, left = tok.pad_token_id, tok.padding_side == "left"
    train_data, val = _encoded(tok), _encoded(tok, n=40, seed=1)
    model = build_model(tiny_profile.models[family], tok, 2, TOY.max_length, 0)
    before = predict(model, train_data, 64, "cpu", pad, left)
    state, meta = lpft.fit_head(model, 2, train_data, val, "accuracy", 64, "cpu", pad, left)
    assert meta["layer"] == lpft.output_layer(model, 2)[0] and meta["validation_size"] == 40
    assert meta["C"] in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0) and set(meta["validation"]) == \
        {"0.01", "0.1", "1", "10", "100", "1000"}
    lpft.load_head(model, 2, state)
    after = predict(model, train_data, 64, "cpu", pad, left)
    # an independent fit on the same features with the chosen C predicts the same classes
    _, layer = lpft.output_layer(model, 2)
    x = lpft.layer_inputs(model, layer, train_data, 64, "cpu", pad, left)
    independent = LogisticRegression(C=meta["C"], max_iter=2000).fit(x, train_data.targets.astype(int))
    np.testing.assert_array_equal(after, independent.predict(x))
    assert meta["train_accuracy"] == pytest.approx(float(np.mean(after == train_data.targets)))
    assert meta["train_accuracy"] > np.mean(before == train_data.targets) or meta["train_accuracy"] == 1.0


def test_one_class_keeps_the_random_start(tiny_profile, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    rows = _encoded(tok)
    rows = dataclasses.replace(rows, targets=np.zeros_like(rows.targets))
    model = build_model(tiny_profile.models["bert"], tok, 2, TOY.max_length, 0)
    weight = lpft.output_layer(model, 2)[1].weight.detach().clone()
    state, meta = lpft.fit_head(model, 2, rows, None, "accuracy", 64, "cpu", tok.pad_token_id, False)
    lpft.load_head(model, 2, state)
    assert state == {} and "one class" in meta["skipped"]
    assert torch.equal(lpft.output_layer(model, 2)[1].weight, weight)


def test_head_init_comes_from_the_row_then_the_profile_and_never_for_regression(tiny_profile):
    cls, sim = Cell("bert", "classification", "general"), Cell("bert", "similarity", "general")
    assert cell_head_init(tiny_profile, cls) == "random"  # tiny: the seed recipe
    p = dataclasses.replace(tiny_profile, head_init="probe")
    assert cell_head_init(p, cls) == "probe" and cell_head_init(p, sim) == "random"
    row = dataclasses.replace(p.models["bert"], head_init="random")
    assert cell_head_init(dataclasses.replace(p, models={**p.models, "bert": row}), cls) == "random"


def test_an_unknown_head_init_names_the_file_the_entry_and_the_key(tiny_profile, data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", target_entry(), extra='\n[models]\nbert = { source = "x", head_init = '
                                                                 '"zero" }\n')
    message = spec_error(tiny_profile, spec, data)
    assert "[models] key 'bert.head_init': unknown head_init 'zero' (valid: random, probe)" in message
    path = tmp_path / "mine.toml"
    path.write_text('[profile]\nhead_init = "lp"\n\n[models]\nbert = "x"\nroberta = "y"\nxlnet = "z"\n')
    with pytest.raises(SpecError) as err:
        read_profile(path, "mine", None, tmp_path)
    assert str(err.value) == f"{path}: [profile] key 'head_init': unknown head_init 'lp' (valid: random, probe)"


@pytest.mark.slow
def test_a_probe_cell_records_its_probes_and_has_its_own_config_key(tiny_corpora, tmp_path):
    from micro_profile import micro

    from harness.pipeline import run_cell
    from harness.results.record import validate
    from harness.running.context import RunContext

    records = {}
    for head_init in ("random", "probe"):
        profile = dataclasses.replace(micro(tiny_corpora, tmp_path / "cache"), head_init=head_init)
        ctx = RunContext(profile=profile, results_dir=tmp_path / head_init, cache_dir=tmp_path / "cache",
                         seeds=[0, 1], tune=True)
        records[head_init] = run_cell(ctx, Cell("bert", "classification", "general"))
    random, probe = records["random"], records["probe"]
    assert "head_init" not in random and probe["config_key"] != random["config_key"]
    validate(probe, tmp_path / "probe.json")
    arms = probe["head_init"]["arms"]
    assert probe["head_init"]["mode"] == "probe"
    assert {arm: [p["seed"] for p in arms[arm]] for arm in arms} == {"direct": [0, 1], "intermediate": [0, 1]}
    assert all(p["validation_source"] == "the search's validation split" for runs in arms.values() for p in runs)
    assert probe["timings"]["probe_s"] > 0
    # the intermediate models are shared: only the target step's head start differs
    assert [m["key"] for m in probe["intermediate"]] == [m["key"] for m in random["intermediate"]]
    assert probe["metrics_per_seed"] != random["metrics_per_seed"]
