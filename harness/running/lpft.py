"""LP-FT (Kumar et al., ICLR 2022): a classification head that starts from the linear probe of its encoder.

With `head_init = "probe"` (a profile's [profile] table or a model row), each arm's target fine-tuning starts the
head's output layer (the `nn.Linear` that produces the logits: PooledModel's `classifier`, BERT's `classifier`,
RoBERTa's `classifier.out_proj`, XLNet's `logits_proj`) from a logistic regression fit on what that layer reads:
the features of the training rows under the model the arm starts from (the pretrained encoder for `direct`, the
intermediate-trained one for `intermediate`), computed without dropout. Its C is chosen on the validation split
the search selects on (else on a fixed carve of the training rows; harness.running.frozen.select_probe). The
first fine-tuning steps then follow a head that already separates the classes instead of a random one, which
distorts the pretrained features less; Kumar et al. report the gain mostly out of distribution (here: domain
shift and the zero-shot languages).

Only classification-type targets use it (a regression head has no probe to start from). The intermediate model's
head is thrown away after its task, so it keeps its random start, and its cache is shared with `random` cells.
A probe is deterministic (lbfgs) and draws from no random stream, so `random` cells are unchanged by this module.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from harness.definitions.data import Encoded
from harness.running.frozen import select_probe
from harness.running.train import autocast, collate, eval_batches, lengths_of


def output_layer(model, num_labels: int) -> tuple[str, torch.nn.Linear]:
    """(name, layer): the last `nn.Linear` outside the encoder with `num_labels` outputs, the head's logits."""
    inside = {id(m) for m in model.base_model.modules()}
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == num_labels and id(m) not in inside]
    if not found:
        raise ValueError(f"{type(model).__name__}: no output layer with {num_labels} outputs outside the encoder "
                         f"for head_init = \"probe\"")
    return found[-1]


@torch.inference_mode()
def layer_inputs(model, layer: torch.nn.Module, data: Encoded, batch_size: int, device, pad_id: int,
                 left_pad: bool) -> np.ndarray:
    """What `layer` reads for every example of `data` (n, in_features), in the order of `data`, in eval mode."""
    model.to(device).eval()
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].float().cpu()))
    out = np.zeros((len(data), layer.in_features), dtype=np.float32)
    try:
        for idx in eval_batches(lengths_of(data), batch_size, int):
            with autocast(device):
                model(**collate(data, idx, pad_id, left_pad, device))
            out[idx] = captured.pop().numpy()
    finally:
        handle.remove()
    return out


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
