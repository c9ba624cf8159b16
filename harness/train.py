"""The training loop and batched prediction.

Batches are length-grouped (examples sorted by length inside shuffled chunks, then the batches shuffled),
padded to the longest sequence in the batch, so little compute is spent on padding.
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.data import Encoded
from harness.profiles import TrainConfig

log = logging.getLogger(__name__)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk: int = 50):
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        block = order[start:start + batch_size * chunk]
        block = block[np.argsort(lengths[block], kind="stable")]
        batches += [block[i:i + batch_size] for i in range(0, len(block), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(data: Encoded, idx, pad_id: int, left_pad: bool, device) -> dict:
    seqs = [data.input_ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    types = np.zeros((len(seqs), width), dtype=np.int64) if data.token_type_ids is not None else None
    for row, i in enumerate(idx):
        n = len(data.input_ids[i])
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[row, cols], mask[row, cols] = data.input_ids[i], 1
        if types is not None:
            types[row, cols] = data.token_type_ids[i]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _quiet() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ or not log.isEnabledFor(logging.INFO) and os.environ.get("CI") == "true"


def train(model, data: Encoded, cfg: TrainConfig, seed: int, device, pad_id: int, left_pad: bool,
          desc: str = "train") -> dict:
    """Fine-tune all weights with AdamW and linear warm-up/decay. Returns timings and the loss curve."""
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    lengths = np.fromiter((len(x) for x in data.input_ids), dtype=np.int64, count=len(data))
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps), steps)
    targets = torch.from_numpy(data.targets)
    losses, seen, start = [], 0, time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=_quiet(), leave=False)
    for _ in range(cfg.epochs):
        for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
            batch = collate(data, idx, pad_id, left_pad, device)
            out = model(**batch, labels=targets[idx].to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
            seen += len(idx)
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    curve = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)
    return {"seconds": seconds, "examples": seen, "examples_per_s": seen / max(seconds, 1e-9),
            "steps": steps, "loss_first": float(curve[:5].mean()) if len(curve) else math.nan,
            "loss_last": float(curve[-5:].mean()) if len(curve) else math.nan}


@torch.inference_mode()
def predict(model, data: Encoded, batch_size: int, device, pad_id: int, left_pad: bool) -> np.ndarray:
    """Class ids (or regression scores) in the order of `data`; batches sorted by length."""
    model.to(device).eval()
    order = np.argsort([len(x) for x in data.input_ids], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        logits = model(**collate(data, order[start:start + batch_size], pad_id, left_pad, device)).logits
        out.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
    preds = torch.cat(out).float().cpu().numpy() if out else np.zeros(0)
    result = np.empty_like(preds)
    result[order] = preds
    return result
