"""The training loop and batched prediction.

Fast where it matters, without changing what is computed (on CPU a seed gives the same metrics every run):
- batches are length-grouped (examples sorted by length inside shuffled chunks, then the batches shuffled) and
  padded to the longest sequence in the batch, so little compute goes to padding; a batch of equal lengths
  (on short texts, most of them) goes without an attention mask; tokenisation happened once
  before (the run context's memo and disk cache), collate only pads;
- fused AdamW and foreach gradient clipping: a few kernels over all tensors instead of a Python loop per tensor;
- no host-device sync per step (losses stay on the device until the end);
- prediction under inference_mode, in length-sorted batches of up to `batch_size` examples that hold about
  `batch_size` x mean-length tokens (long examples go in smaller batches: padding costs as much as real tokens);
- on CUDA: bf16 autocast where the device supports it (devices.precision), pinned host memory with non-blocking
  copies, batch widths rounded up to a few shape buckets (harness.training.buckets; CPU keeps exact widths), the SDPA
  backends chosen by a probe (harness.training.attention), large evaluation batches; `compile=True` (pytest --compile)
  compiles the step once per bucket (harness.training.compiled).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.definitions.config import TrainConfig
from harness.definitions.data import Encoded
from harness.training import attention, buckets
from harness.training.compiled import CompiledSteps
from harness.training.devices import precision

log = logging.getLogger(__name__)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk: int = 50):
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        block = order[start:start + batch_size * chunk]
        block = block[np.argsort(lengths[block], kind="stable")]
        batches += [block[i:i + batch_size] for i in range(0, len(block), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int, width=int) -> list:
    """Indices sorted by length, cut into batches of at most `batch_size` examples and `batch_size` x mean
    length padded tokens (a batch is padded to `width(its longest length)`)."""
    order = np.argsort(lengths, kind="stable")
    budget = batch_size * max(1.0, float(lengths.mean())) if len(lengths) else 0.0
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while (end < len(order) and end - start < batch_size
               and (end + 1 - start) * width(lengths[order[end]]) <= budget):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def collate(data: Encoded, idx, pad_id: int, left_pad: bool, device, with_labels: bool = False,
            shapes: buckets.Buckets = buckets.Buckets()) -> dict:
    """The examples `idx` padded to the longest of them (rounded up to `shapes`' bucket), as tensors on `device`
    (labels too if asked).

    A batch whose examples all have the same length (length grouping makes many of them so) gets no attention
    mask: the model then skips the masking work (and SDPA may pick a mask-free kernel); on CPU the numbers are
    the same bit for bit."""
    seqs = [data.input_ids[i] for i in idx]
    width = shapes.width(max(len(s) for s in seqs))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64) if data.token_type_ids is not None else None
    for row, i in enumerate(idx):
        n = len(data.input_ids[i])
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[row, cols], mask[row, cols] = data.input_ids[i], 1
        if types is not None:
            types[row, cols] = data.token_type_ids[i]
    batch = {"input_ids": ids}
    if any(len(s) < width for s in seqs):  # an all-ones mask changes no number, but costs masking work
        batch["attention_mask"] = mask
    if types is not None:
        batch["token_type_ids"] = types
    if with_labels:
        batch["labels"] = data.targets[np.asarray(idx)]
    return {k: to_device(torch.from_numpy(v), device) for k, v in batch.items()}


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory, so the copy does not block the host."""
    if torch.device(device).type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast(device):
    """bf16 autocast where `precision(device)` says bf16 (by default a GPU with bf16 support; any device under
    `--precision bf16`); a no-op context elsewhere (the CPU's default, fp32: the same numbers on any CPU)."""
    if precision(device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lengths_of(data: Encoded) -> np.ndarray:
    return np.fromiter((len(x) for x in data.input_ids), dtype=np.int64, count=len(data))


def _quiet() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ or not log.isEnabledFor(logging.INFO) and os.environ.get("CI") == "true"


def optimizer(params: list, cfg: TrainConfig, steps: int, stacked: bool = False):
    """(AdamW, linear warm-up/decay schedule) of a training run of `steps` steps: fused AdamW with weight decay on
    the weight matrices (tensors of two or more dimensions; `stacked`: of a grouped model, whose tensors carry the
    member as an extra leading dimension) and none on biases and norms."""
    from transformers import get_linear_schedule_with_warmup

    matrix = 3 if stacked else 2
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= matrix], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < matrix], "weight_decay": 0.0}],
                            lr=cfg.lr, fused=True)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps), steps)


def train(model, data: Encoded, cfg: TrainConfig, seed: int, device, pad_id: int, left_pad: bool,
          desc: str = "train", compile: bool | str = False, on_epoch=None) -> dict:
    """Fine-tune all weights with AdamW and linear warm-up/decay. Returns timings and the loss curve.

    `compile`: True compiles the step with inductor, a string with that torch.compile backend.
    `on_epoch(epoch)`, when given, is called after each epoch (1-based), e.g. to score a validation split
    (harness.running.tuning); its time is returned as `callback_seconds` and is not part of `seconds`. When it
    returns True, training stops after that epoch (early stopping; the schedule stays planned for cfg.epochs)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    shapes = buckets.for_device(device, cfg.max_length)
    sdpa = attention.for_model(model, device, shapes.widths(), cfg.batch_size)
    forward = CompiledSteps(model, cfg.batch_size, len(shapes.widths()),
                            compile if isinstance(compile, str) else "inductor") if compile else model
    lengths = lengths_of(data)
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = optimizer(params, cfg, steps)
    amp = autocast(device)
    losses, seen, start, hooked = [], 0, time.perf_counter(), 0.0
    bar = tqdm(total=steps, desc=desc, disable=_quiet(), leave=False)
    for epoch in range(cfg.epochs):
        for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
            batch = collate(data, idx, pad_id, left_pad, device, with_labels=True, shapes=shapes)
            with amp, sdpa:
                loss = forward(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            seen += len(idx)
            bar.update()
        if on_epoch is not None:
            t = time.perf_counter()
            stop = on_epoch(epoch + 1)
            model.train()
            hooked += time.perf_counter() - t
            if stop:
                break
    bar.close()
    curve = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)  # the loop's only sync
    seconds = time.perf_counter() - start - hooked
    return {"seconds": seconds, "examples": seen, "examples_per_s": seen / max(seconds, 1e-9),
            "callback_seconds": hooked, "steps": steps, "compiles": forward.compiles if compile else 0,
            "loss_first": float(curve[:5].mean()) if len(curve) else math.nan,
            "loss_last": float(curve[-5:].mean()) if len(curve) else math.nan}


@torch.inference_mode()
def predict(model, data: Encoded, batch_size: int, device, pad_id: int, left_pad: bool) -> np.ndarray:
    """Class ids (or regression scores) in the order of `data`; batches sorted by length (on a GPU, large and
    bucketed)."""
    model.to(device).eval()
    lengths = lengths_of(data)
    shapes = buckets.for_device(device, int(lengths.max()) if len(lengths) else None)
    size = buckets.eval_batch_size(device, batch_size)
    batches = eval_batches(lengths, size, shapes.width)
    out, amp, sdpa = [], autocast(device), attention.for_model(model, device, shapes.widths(), size)
    for idx in batches:
        with amp, sdpa:
            logits = model(**collate(data, idx, pad_id, left_pad, device, shapes=shapes)).logits
        out.append(logits.squeeze(-1).float() if logits.shape[-1] == 1 else logits.argmax(-1))
    preds = torch.cat(out).float().cpu().numpy() if out else np.zeros(0)
    result = np.empty_like(preds)
    result[np.concatenate(batches) if batches else []] = preds
    return result
