"""The frozen floor of a cell: what the pretrained encoder does untouched, the reference both arms must beat.

Once per cell (it has no seed), the encoder the arms start from (a pretrained checkpoint; for `tiny`, the random
initialisation of seed 0) embeds every text, pooled as the checkpoint pools (harness.running.pooling, L2-normalised
where the checkpoint says so), and is scored on every test set like the arms:
- similarity (pair regression): the cosine of the two texts' embeddings;
- classification-type tasks: a logistic regression (scikit-learn) on the embeddings of the same training rows the
  arms train on, its regularisation C chosen on the validation split (the target's, when tuning selected one;
  else a fixed-seed carve of the training rows, C then refit on all of them); a pair classification task (nli)
  reads the features (u, v, |u - v|, u * v) of the two texts' embeddings (Conneau et al., 2017).
Nothing here draws from the arms' random streams: the encoder is built under a forked torch RNG and the probe
is deterministic (lbfgs), so computing the floor changes no arm's number.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from harness.definitions.data import CHARS_PER_TOKEN, Split
from harness.definitions.metrics import FUNCTIONS
from harness.definitions.tasks import task_type
from harness.running.models import build_model, cell_heads
from harness.running.pooling import normalizes, pooled
from harness.running.train import autocast

RECIPE = 1  # bump when the floor's computation changes: part of the cell's config key
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
VALIDATION_FRACTION = 0.15  # the carve when the cell has no validation split
BATCH = 64


def floor(ctx, cell, target, tokenizer, metric: str) -> tuple[dict[str, np.ndarray], dict]:
    """The floor's predictions per test language (scores or class ids, in the order of the test rows) and what
    the record keeps about it (`frozen`: pooling, features, the probe's C and validation scores, seconds)."""
    start = time.perf_counter()
    p, kind = ctx.profile, task_type(cell.task)
    spec, max_length = p.models[cell.model], p.target_train.max_length
    pooling, _ = cell_heads(p, cell)
    with torch.random.fork_rng():
        encoder = build_model(spec, tokenizer, kind.num_labels(target.labels), max_length, 0, pooling).base_model
    normalize = normalizes(spec)

    def features(split: Split) -> np.ndarray:
        u = embed(encoder, tokenizer, split.texts, max_length, pooling, normalize, ctx.device)
        if split.texts_b is None:
            return u
        v = embed(encoder, tokenizer, split.texts_b, max_length, pooling, normalize, ctx.device)
        return cosine(u, v) if kind.regression else np.concatenate([u, v, np.abs(u - v), u * v], axis=1)

    meta = {"pooling": pooling, "normalized": normalize}
    if kind.regression:
        preds = {lang: features(split) for lang, split in target.tests.items()}
        meta["features"] = "cosine of the two texts' pooled embeddings"
    else:
        ids = {label: i for i, label in enumerate(target.labels)}
        x, y = features(target.train), np.array([ids[label] for label in target.train.labels])
        validation = None
        if target.validation is not None:
            validation = (features(target.validation), np.array([ids[label] for label in target.validation.labels]),
                          target.validation_source)
        model, chosen = select_probe(x, y, validation, metric)
        preds = {lang: model.predict(features(split)).astype(np.float32) for lang, split in target.tests.items()}
        meta.update(features="(u, v, |u - v|, u * v) of the two texts' pooled embeddings" if kind.pair
                    else "pooled embeddings", probe=chosen)
    meta["seconds"] = time.perf_counter() - start
    return preds, meta


@torch.inference_mode()
def embed(encoder, tokenizer, texts: list, max_length: int, pooling: str, normalize: bool, device,
          batch_size: int = BATCH) -> np.ndarray:
    """Pooled embeddings (n, dim) of `texts`, each tokenised on its own as the arms read it (cut to
    `max_length` tokens), in length-sorted batches."""
    encoder.to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = None
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i][:max_length * CHARS_PER_TOKEN] for i in idx], truncation=True,
                          max_length=max_length, padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with autocast(device):
            output = encoder(**batch)
        emb = pooled(output, batch["attention_mask"], pooling, cls_last=tokenizer.padding_side == "left").float()
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        emb = emb.cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    return ((u * v).sum(axis=1) / np.maximum(norms, 1e-12)).astype(np.float32)


def select_probe(x: np.ndarray, y: np.ndarray, validation: tuple | None, metric: str):
    """The probe of y on x with C chosen on `validation` = (x, y, where it came from); None: on a fixed-seed carve
    of the rows (VALIDATION_FRACTION), C then refit on all of them. Returns the probe fit on every row and what the
    record keeps (C, the validation score of each C, the validation's source and size)."""
    if validation is not None:
        xv, yv, source = validation
        fit_x, fit_y = x, y
    else:
        order = np.random.default_rng(0).permutation(len(y))
        cut = max(1, round(VALIDATION_FRACTION * len(y)))
        xv, yv, fit_x, fit_y = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
        source = "carved (C chosen, then refit on every training row)"
    scores = {c: float(FUNCTIONS[metric](yv, probe(fit_x, fit_y, c).predict(xv))) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    return probe(x, y, best), {"C": best, "metric": metric, "validation": {f"{c:g}": s for c, s in scores.items()},
                               "validation_source": source, "validation_size": int(len(yv))}


def probe(x: np.ndarray, y: np.ndarray, c: float):
    """A logistic regression (lbfgs, deterministic) of y on x; one class only: a model that predicts it."""
    from sklearn.dummy import DummyClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return DummyClassifier(strategy="most_frequent").fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=2000).fit(x, y)
