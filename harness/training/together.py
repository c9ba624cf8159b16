"""Models trained together (the default of untuned tiny cells, pytest --train-together / --no-train-together): the
untuned target training of a cell's arms, all seeds and both arms, as one grouped model (harness.training.grouped:
the members folded into the batch), so a step does every member's work in one pass of larger kernels; likewise
the intermediate models of the run's seeds (harness.running.intermediate.intermediate_body with `together`).

Each member keeps its own initialisation (build_model with its seed; the intermediate arm its seed's body), data
order (numpy generator of its seed, as harness.training.loop), loss, gradient clipping (per-member norm) and
AdamW state (AdamW is elementwise: a stacked tensor's state is the members' states side by side). What members
share: the sequence of width buckets of an epoch's steps (paired_steps; the batches within a bucket come in each
member's own order), the step's batch width (each member's batch is padded to the widest of the step, with an attention mask;
a member whose batch is short, the last one of an epoch, is padded with zero-weight rows) and the dropout
stream (one generator seeded by the group draws every row's masks, so each member gets its own: on CPU a numpy
generator, harness.training.grouped.GroupedDropout). So a seed's
numbers are not those of sequential training and depend on the group it trains in (the cell's seeds, part of the
record's configuration key); the same group gives the same numbers on every run, alone or under xdist (CPU).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from harness.definitions.config import TrainConfig
from harness.definitions.data import Encoded
from harness.training.grouped import group
from harness.training.loop import autocast, eval_batches, length_grouped_batches, lengths_of, optimizer


def group_seed(seeds) -> int:
    """The dropout generator's seed of a group of member seeds (order matters: it is the members' order)."""
    return int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1)[0])


PAIRING = "width-buckets"  # how paired_steps pairs members' batches: in the cell and intermediate cache keys
MIN_PER_BUCKET, MAX_BUCKETS = 4, 8  # width buckets of a grouped epoch: at least 4 batches each, at most 8 buckets


def paired_steps(plans: list, lengths: np.ndarray, rng: np.random.Generator, own: list) -> list[tuple]:
    """One epoch's steps: at each step every member's batch (plans[m]: member m's batches).

    Each member's batches are ranked by width (longest example, then size) and cut into width buckets of at least
    MIN_PER_BUCKET batches (at most MAX_BUCKETS buckets); a step takes one batch of the same bucket from every
    member, so its batches are about equally wide and little of the step goes to padding. Within a bucket each member
    takes its batches in an order of its own (`own[m]`, its generator), so members see an example at unrelated times
    (the correlation of those steps is about 0, tests/test_ensemble.py). The two arms of one seed share its generator,
    so they see the same order, as in sequential training. The buckets' steps are spread evenly over the epoch (the j-th of a bucket's n_b
    steps at (j + 1/2) / n_b of it, ties in an order drawn from `rng`, the group's generator), so no bucket's examples
    come early or late for every member at once."""
    ranked = [sorted(plan, key=lambda idx: (int(lengths[idx].max()), len(idx))) for plan in plans]
    n = len(ranked[0])
    buckets = max(1, min(MAX_BUCKETS, n // MIN_PER_BUCKET))
    edges = np.linspace(0, n, buckets + 1).round().astype(int)
    queues = [[[plan[lo:hi][i] for i in gen.permutation(hi - lo)] for lo, hi in zip(edges[:-1], edges[1:])]
              for plan, gen in zip(ranked, own)]
    slots = sorted(((j + 0.5) / (hi - lo), tie, b) for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
                   for j, tie in zip(range(hi - lo), rng.random(hi - lo)))
    taken = [0] * buckets
    steps = []
    for _, _, b in slots:
        steps.append(tuple(queue[b][taken[b]] for queue in queues))
        taken[b] += 1
    return steps


def _pad(data: Encoded, batches: list, width: int, size: int, pad_id: int, left_pad: bool):
    """Members' batches as [members, size, width] arrays (ids, mask, token types or None, targets, row weights)."""
    k = len(batches)
    ids = np.full((k, size, width), pad_id, dtype=np.int64)
    mask = np.zeros((k, size, width), dtype=np.int64)
    types = np.zeros((k, size, width), dtype=np.int64) if data.token_type_ids is not None else None
    weights = np.zeros((k, size), dtype=np.float32)
    targets = np.zeros((k, size), dtype=data.targets.dtype)
    for m, idx in enumerate(batches):
        rows = list(idx) + [idx[0]] * (size - len(idx))  # filler rows: a real example, weight 0
        weights[m, :len(idx)] = 1.0 / len(idx)
        for r, i in enumerate(rows):
            n = len(data.input_ids[i])
            cols = slice(width - n, width) if left_pad else slice(0, n)
            ids[m, r, cols], mask[m, r, cols] = data.input_ids[i], 1
            if types is not None:
                types[m, r, cols] = data.token_type_ids[i]
        targets[m] = data.targets[np.asarray(rows)]
    return ids, mask, types, targets, weights


class Stacked:
    """k models of one architecture as one grouped model (harness.training.grouped: the members folded into the
    batch); `params` maps each parameter name to the members' stacked tensor [k, ...]."""

    def __init__(self, models: list, device, family: str, seed: int = 0):
        self.models, self.device = [m.to(device) for m in models], device
        self.base = group(self.models, family, seed).to(device)
        self.params = self.base.stacked()

    def logits(self, ids, mask, types, shared: bool = False):
        """[members, batch, labels]; ids [members, batch, width], or [batch, width] with `shared`: the same batch
        for every member (evaluation)."""
        k = len(self.models)
        rows = (lambda t: None if t is None else t.expand(k, *t.shape).reshape(-1, t.shape[-1])) if shared else \
            (lambda t: None if t is None else t.reshape(-1, t.shape[-1]))
        kwargs = {"attention_mask": rows(mask)} if mask is not None else {}
        if types is not None:
            kwargs["token_type_ids"] = rows(types)
        with autocast(self.device):
            out = self.base(rows(ids), **kwargs).logits
        return out.view(k, -1, out.shape[-1])

    def write_back(self) -> None:
        """The trained stacked weights into each member model."""
        with torch.no_grad():
            for name, stacked in self.params.items():
                for m, model in enumerate(self.models):
                    model.get_parameter(name).copy_(stacked[m])


def _tensor(array, device):
    return None if array is None else torch.from_numpy(array).to(device)


def train_together(models: list, family: str, data: Encoded, cfg: TrainConfig, seeds: list, device, pad_id: int,
                   left_pad: bool) -> list[dict]:
    """Train `models` (member m with data order `seeds[m]`) together; their weights are updated in place. Returns
    one info dict per member, as harness.training.loop.train (each member's `seconds`: the wall time / k)."""
    torch.manual_seed(group_seed(seeds))
    k = len(models)
    rngs = [np.random.default_rng(s) for s in seeds]
    order = np.random.default_rng(group_seed(seeds))  # the steps' order (paired_steps)
    for model in models:
        model.train()
    stack = Stacked(models, device, family, group_seed(seeds))
    stack.base.train()
    lengths = lengths_of(data)
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    steps = cfg.epochs * per_epoch
    params = list(stack.params.values())
    opt, sched = optimizer(params, cfg, steps, stacked=True)
    regression = data.targets.dtype.kind == "f"
    losses, start = [], time.perf_counter()
    for _ in range(cfg.epochs):
        for step in paired_steps([length_grouped_batches(lengths, cfg.batch_size, rng) for rng in rngs], lengths,
                                 order, rngs):
            width = int(max(lengths[idx].max() for idx in step))
            ids, mask, types, targets, weights = _pad(data, list(step), width, max(len(i) for i in step), pad_id,
                                                      left_pad)
            full = bool(mask.all())
            logits = stack.logits(_tensor(ids, device), None if full else _tensor(mask, device),
                                  _tensor(types, device))
            y, w = _tensor(targets, device), _tensor(weights, device)
            if regression:
                per_row = (logits.squeeze(-1).float() - y.float()) ** 2
            else:
                per_row = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(k, -1)
            member_loss = (per_row * w).sum(1)  # each member's mean loss over its real rows
            member_loss.sum().backward()
            _clip(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(member_loss.detach())
    stack.write_back()
    curve = torch.stack(losses).cpu().numpy() if losses else np.zeros((0, k))
    seconds = time.perf_counter() - start
    return [{"seconds": seconds / k, "examples": cfg.epochs * len(data), "examples_per_s": k * cfg.epochs * len(data)
             / max(seconds, 1e-9), "callback_seconds": 0.0, "steps": steps, "compiles": 0, "ensemble": k,
             "loss_first": float(curve[:5, m].mean()) if len(curve) else math.nan,
             "loss_last": float(curve[-5:, m].mean()) if len(curve) else math.nan} for m in range(k)]


def _clip(params: list, max_norm: float) -> None:
    """clip_grad_norm_ per member: each member's gradient norm over all its tensors (dim 0 is the member)."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]),
                                     dim=0)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [coef.view(-1, *([1] * (g.ndim - 1))) for g in grads])


@torch.inference_mode()
def predict_together(models: list, family: str, data: Encoded, batch_size: int, device, pad_id: int,
                     left_pad: bool) -> list[np.ndarray]:
    """Each member's predictions (class ids or scores, in the order of `data`), all members in one pass a batch."""
    for model in models:
        model.eval()
    stack = Stacked(models, device, family)
    stack.base.eval()
    lengths = lengths_of(data)
    batches = eval_batches(lengths, batch_size, int)
    out = []
    for idx in batches:
        ids, mask, types, _, _ = _pad(data, [idx], int(lengths[idx].max()), len(idx), pad_id, left_pad)
        logits = stack.logits(_tensor(ids[0], device), None if mask.all() else _tensor(mask[0], device),
                              _tensor(types[0] if types is not None else None, device), shared=True)
        out.append(logits.squeeze(-1).float() if logits.shape[-1] == 1 else logits.argmax(-1))
    preds = torch.cat(out, dim=1).cpu().numpy() if out else np.zeros((len(models), 0))
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    result = np.empty_like(preds)
    result[:, order] = preds
    return list(result)
