"""The training loop: it learns a learnable toy set, lr=0 learns nothing, a seed fixes everything."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOY, toy_split
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.definitions.config import TrainConfig
from harness.definitions.data import Split, encode
from harness.definitions.metrics import accuracy, spearman
from harness.training.loop import length_grouped_batches, predict, train
from harness.training.models import build_model


def _toy_pairs(n: int = 96, seed: int = 0) -> Split:
    """Score = how often the cue word `ba` occurs in the pair (0..3): a graded target a model can learn."""
    rng = np.random.default_rng(seed)
    filler = ["ti", "ke", "so", "pe", "ra", "lo"]
    a, b, scores = [], [], []
    for _ in range(n):
        cues = int(rng.integers(0, 4))
        words = list(rng.choice(filler, size=6)) + ["ba"] * cues
        words = list(rng.permutation(words))
        a.append(" ".join(words[:4]))
        b.append(" ".join(words[4:]))
        scores.append(float(cues))
    return Split("toy-pairs", a, b, scores)


def _setup(profile, tokenizers, family="bert", pairs=False, seed=0):
    tok = tokenizers[family]
    split = _toy_pairs() if pairs else toy_split()
    labels = None if pairs else ["a", "b"]
    data = encode(tok, split, TOY.max_length, labels)
    model = build_model(profile.models[family], tok, 1 if pairs else 2, TOY.max_length, seed)
    return model, data, tok


def _fit(model, data, tok, cfg=TOY, seed=0):
    info = train(model, data, cfg, seed, "cpu", tok.pad_token_id, tok.padding_side == "left")
    return info, predict(model, data, 64, "cpu", tok.pad_token_id, tok.padding_side == "left")


def test_loss_falls_and_the_classifier_learns(tiny_profile, tiny_tokenizers):
    model, data, tok = _setup(tiny_profile, tiny_tokenizers)
    info, preds = _fit(model, data, tok)
    assert info["loss_last"] < 0.5 * info["loss_first"]
    assert accuracy(data.targets, preds) >= 0.9
    assert info["examples"] == TOY.epochs * len(data)
    assert info["steps"] == TOY.epochs * -(-len(data) // TOY.batch_size)
    assert info["seconds"] > 0 and info["examples_per_s"] > 0


def test_regression_head_learns_graded_scores(tiny_profile, tiny_tokenizers):
    model, data, tok = _setup(tiny_profile, tiny_tokenizers, pairs=True)
    info, preds = _fit(model, data, tok, TrainConfig(lr=2e-3, epochs=12, batch_size=16, max_length=16))
    assert preds.dtype == np.float32 and preds.shape == (len(data),)
    assert info["loss_last"] < 0.5 * info["loss_first"]
    assert spearman(data.targets, preds) > 0.5


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_lr_zero_learns_nothing(tiny_profile, tiny_tokenizers, family):
    """The control arm of the lr=0 check: no weight moves, so predictions are those of the fresh model."""
    model, data, tok = _setup(tiny_profile, tiny_tokenizers, family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = predict(model, data, 64, "cpu", tok.pad_token_id, tok.padding_side == "left")
    info, after = _fit(model, data, tok, TrainConfig(lr=0.0, epochs=2, batch_size=16, max_length=16))
    assert info["steps"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    np.testing.assert_array_equal(fresh, after)


def test_same_seed_same_predictions_other_seed_differs(tiny_profile, tiny_tokenizers):
    cfg = TrainConfig(lr=2e-3, epochs=2, batch_size=16, max_length=16)
    runs = []
    for seed in (3, 3, 4):
        model, data, tok = _setup(tiny_profile, tiny_tokenizers, "roberta", pairs=True, seed=seed)
        runs.append(_fit(model, data, tok, cfg, seed=seed))
    (info_a, a), (info_b, b), (_, c) = runs
    np.testing.assert_array_equal(a, b)
    assert info_a["loss_last"] == info_b["loss_last"]
    assert not np.array_equal(a, c)


def test_predict_returns_examples_in_input_order(tiny_profile, tiny_tokenizers):
    model, data, tok = _setup(tiny_profile, tiny_tokenizers, "xlnet", pairs=True)
    batched = predict(model, data, 7, "cpu", tok.pad_token_id, True)
    one_by_one = [predict(model, type(data)([data.input_ids[i]], [data.token_type_ids[i]], data.targets[i:i + 1]),
                          1, "cpu", tok.pad_token_id, True)[0] for i in range(len(data))]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=300), st.integers(1, 40), st.integers(0, 2**31),
       st.integers(1, 8))
def test_length_grouped_batches_cover_each_index_once(lengths, batch_size, seed, chunk):
    lengths = np.asarray(lengths)
    batches = length_grouped_batches(lengths, batch_size, np.random.default_rng(seed), chunk=chunk)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sum(len(b) < batch_size for b in batches) <= -(-len(lengths) // (batch_size * chunk))
    for b in batches:  # batches are cut from length-sorted chunks
        assert np.all(np.diff(lengths[b]) >= 0)


def test_length_grouped_batches_differ_by_epoch_and_reproduce_by_seed():
    lengths = np.arange(200) % 37
    rng = np.random.default_rng(0)
    epoch1, epoch2 = (length_grouped_batches(lengths, 8, rng) for _ in range(2))
    again = length_grouped_batches(lengths, 8, np.random.default_rng(0))
    assert [b.tolist() for b in epoch1] == [b.tolist() for b in again]
    assert [b.tolist() for b in epoch1] != [b.tolist() for b in epoch2]
