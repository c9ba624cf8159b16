"""Linear probes of a pretrained encoder, in two uses that share one feature extractor (`extract`) and one
probe fit (`select_probe`).

1. The frozen floor of a cell: what the pretrained encoder does untouched, the reference both arms must beat.

Once per cell (it has no seed), the encoder the arms start from (a pretrained checkpoint; for `tiny`, the random
initialisation of seed 0) embeds every text, pooled as the checkpoint pools (harness.training.pooling, L2-normalised
where the checkpoint says so), and is scored on every test set like the arms:
- similarity (pair regression): the cosine of the two texts' embeddings;
- classification-type tasks: a logistic regression (scikit-learn) on the embeddings of the same training rows the
  arms train on, its regularisation C chosen on the validation split (the target's, when tuning selected one;
  else a fixed-seed carve of the training rows, C then refit on all of them); a pair classification task (nli)
  reads the features (u, v, |u - v|, u * v) of the two texts' embeddings (Conneau et al., 2017).
Nothing here draws from the arms' random streams: the encoder is built under a forked torch RNG and the probe
is deterministic (lbfgs), so computing the floor changes no arm's number.

2. LP-FT (Kumar et al., ICLR 2022): a classification head that starts from the linear probe of its encoder.

With `head_init = "probe"` (a profile's [profile] table or a model row), each arm's target fine-tuning starts the
head's output layer (the `nn.Linear` that produces the logits: PooledModel's `classifier`, BERT's `classifier`,
RoBERTa's `classifier.out_proj`, XLNet's `logits_proj`) from a logistic regression fit on what that layer reads:
the features of the training rows under the model the arm starts from (the pretrained encoder for `direct`, the
intermediate-trained one for `intermediate`), computed without dropout. Its C is chosen on the validation split
the search selects on (else on a fixed carve of the training rows; select_probe). The
first fine-tuning steps then follow a head that already separates the classes instead of a random one, which
distorts the pretrained features less; Kumar et al. report the gain mostly out of distribution (here: domain
shift and the zero-shot languages).

Only classification-type targets use it (a regression head has no probe to start from). The intermediate model's
head is thrown away after its task, so it keeps its random start, and its cache is shared with `random` cells.
A probe is deterministic (lbfgs) and draws from no random stream, so `random` cells are unchanged by this module.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from harness.definitions.data import CHARS_PER_TOKEN, Encoded, Split, with_prefix
from harness.definitions.metrics import FUNCTIONS
from harness.definitions.tasks import task_type
from harness.running.heads import cell_heads
from harness.training.loop import autocast, collate, eval_batches, lengths_of
from harness.training.models import build_model
from harness.training.pooling import normalizes, pooled

RECIPE = 1  # bump when the floor's computation changes: part of the cell's config key
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
VALIDATION_FRACTION = 0.15  # the carve when the cell has no validation split
BATCH = 64


def floor(ctx, cell, target, tokenizer, metric: str) -> tuple[dict[str, np.ndarray], dict]:
    """The floor's predictions per test language (scores or class ids, in the order of the test rows) and what
    the record keeps about it (`frozen`: pooling, features, the probe's C and validation scores, seconds)."""
    start = time.perf_counter()
    p, kind = ctx.profile, task_type(cell.task)
    row, max_length = p.models[cell.model], p.target_train.max_length
    pooling, _ = cell_heads(p, cell)
    with torch.random.fork_rng():
        encoder = build_model(row, tokenizer, kind.num_labels(target.labels), max_length, 0, pooling).base_model
    normalize = normalizes(row)

    def features(split: Split) -> np.ndarray:
        split = with_prefix(split, row.text_prefix)  # as the arms read it (harness.running.context.encode)
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
def extract(model, batches, forward, n: int, device) -> np.ndarray:
    """The features (n, dim) of n examples, in eval mode: for each (idx, inputs) of `batches`, `forward(inputs)` is
    the [len(idx), dim] tensor of examples idx (the one way both the floor and LP-FT read an encoder)."""
    model.to(device).eval()
    out = None
    for idx, inputs in batches:
        with autocast(device):
            rows = forward(inputs).float().cpu().numpy()
        if out is None:
            out = np.zeros((n, rows.shape[1]), dtype=np.float32)
        out[idx] = rows
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def embed(encoder, tokenizer, texts: list, max_length: int, pooling: str, normalize: bool, device,
          batch_size: int = BATCH) -> np.ndarray:
    """Pooled embeddings (n, dim) of `texts`, each tokenised on its own as the arms read it (cut to
    `max_length` tokens), in length-sorted batches."""
    order = np.argsort([len(t) for t in texts], kind="stable")

    def batches():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i][:max_length * CHARS_PER_TOKEN] for i in idx], truncation=True,
                              max_length=max_length, padding=True, return_tensors="pt")
            yield idx, {k: v.to(device) for k, v in batch.items()
                        if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(batch):
        emb = pooled(encoder(**batch), batch["attention_mask"], pooling, cls_last=tokenizer.padding_side == "left")
        return torch.nn.functional.normalize(emb.float(), dim=-1) if normalize else emb

    return extract(encoder, batches(), forward, len(texts), device)


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


def output_layer(model, num_labels: int) -> tuple[str, torch.nn.Linear]:
    """(name, layer): the last `nn.Linear` outside the encoder with `num_labels` outputs, the head's logits."""
    inside = {id(m) for m in model.base_model.modules()}
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == num_labels and id(m) not in inside]
    if not found:
        raise ValueError(f"{type(model).__name__}: no output layer with {num_labels} outputs outside the encoder "
                         f"for head_init = \"probe\"")
    return found[-1]


def layer_inputs(model, layer: torch.nn.Module, data: Encoded, batch_size: int, device, pad_id: int,
                 left_pad: bool) -> np.ndarray:
    """What `layer` reads for every example of `data` (n, in_features), in the order of `data`, in eval mode."""
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    batches = ((idx, collate(data, idx, pad_id, left_pad, device)) for idx in eval_batches(lengths_of(data),
                                                                                          batch_size, int))

    def forward(batch):
        model(**batch)
        return captured.pop()

    try:
        return extract(model, batches, forward, len(data), device)
    finally:
        handle.remove()


def fit_head(model, num_labels: int, train_data: Encoded, validation: Encoded | None, metric: str,
             batch_size: int, device, pad_id: int, left_pad: bool) -> tuple[dict, dict]:
    """The probe of `model`'s head features: (the output layer's new `weight` and `bias`, what the record keeps:
    layer, C and its validation scores, the probe's training accuracy, seconds). A probe with one class only
    (a training split of one label) leaves the layer as it was (`state` empty, `skipped` says why)."""
    start = time.perf_counter()
    name, layer = output_layer(model, num_labels)
    x = layer_inputs(model, layer, train_data, batch_size, device, pad_id, left_pad)
    y = train_data.targets.astype(np.int64)
    held = None
    if validation is not None:
        held = (layer_inputs(model, layer, validation, batch_size, device, pad_id, left_pad),
                validation.targets.astype(np.int64), "the search's validation split")
    clf, meta = select_probe(x, y, held, metric)
    meta = {"layer": name, **meta, "train_accuracy": float(np.mean(clf.predict(x) == y))}
    if not hasattr(clf, "coef_"):
        meta.update(skipped="one class in the training rows: the head keeps its random start",
                    seconds=time.perf_counter() - start)
        return {}, meta
    weight, bias = logits_layer(clf.coef_, clf.intercept_, clf.classes_, num_labels)
    meta["seconds"] = time.perf_counter() - start
    return {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}, meta


def logits_layer(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray, num_labels: int):
    """(weight, bias) of a linear layer whose softmax over `num_labels` logits is the logistic regression's: a
    binary fit (one row, the log-odds of classes[1]) becomes two rows of half the log-odds each; a class the
    training rows lack gets zero weights and a bias 10 below the others' (it is never the argmax on its own)."""
    weight = np.zeros((num_labels, coef.shape[1]), dtype=np.float32)
    bias = np.zeros(num_labels, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64)
    if coef.shape[0] == 1:  # sklearn's binary case
        weight[classes[1]], bias[classes[1]] = coef[0] / 2, intercept[0] / 2
        weight[classes[0]], bias[classes[0]] = -coef[0] / 2, -intercept[0] / 2
    else:
        weight[classes], bias[classes] = coef, intercept
    absent = np.setdiff1d(np.arange(num_labels), classes)
    if len(absent):
        bias[absent] = bias[classes].min() - 10.0
    return weight, bias


def load_head(model, num_labels: int, state: dict) -> None:
    """Write a fit_head state into `model`'s output layer (nothing for an empty state)."""
    if not state:
        return
    _, layer = output_layer(model, num_labels)
    with torch.no_grad():
        layer.weight.copy_(state["weight"].to(layer.weight))
        layer.bias.copy_(state["bias"].to(layer.bias))
