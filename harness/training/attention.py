"""The SDPA backends attention may use, chosen by measurement on a GPU.

torch picks a scaled-dot-product-attention kernel per call among the enabled backends (flash, memory-efficient,
cuDNN, math). Which set is fastest depends on the GPU, the dtype, the head size and the mask, and the cuDNN
backend builds a plan per new shape (on an H200 that planning made the first epoch 3x slower than the second;
docs/performance.md). So before a model with SDPA attention trains on CUDA, a probe times a forward and backward pass of
attention over the bucket widths (the first call of each shape included, so planning counts) with each
candidate set, and the fastest set is used for every training and evaluation step of the process: chosen once
per device, dtype and head shape, with no per-shape planning of our own.

TRANSFER_BENCH_SDPA: `auto` (the default: the probe on CUDA, torch's own choice elsewhere), `default` (torch's
own choice), or a comma list of backends (flash, efficient, cudnn, math) to use on any device.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import torch

log = logging.getLogger(__name__)
BACKENDS = ("flash", "efficient", "cudnn", "math")
# Every candidate keeps `math`, the fallback that runs any input; the first is torch's default (all enabled).
CANDIDATES = ("flash,efficient,cudnn,math", "flash,efficient,math", "efficient,math", "cudnn,math", "math")
PROBE_WIDTHS = 8  # at most this many widths are probed (spread evenly): the probe should take a second or so
_chosen: dict = {}  # (device, dtype, heads, head_dim) -> the fastest candidate: one probe per process


class Backends:
    """A reusable context that lets SDPA use only the backends `names` (e.g. "flash,efficient,math")."""

    def __init__(self, names: str):
        from torch.nn.attention import SDPBackend

        kinds = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        parts = [p.strip() for p in names.split(",") if p.strip()]
        unknown = [p for p in parts if p not in kinds]
        if unknown or not parts:
            raise ValueError(f"SDPA backends {names!r}: expected a comma list of {', '.join(BACKENDS)}")
        self.names, self.kinds, self._open = ",".join(parts), [kinds[p] for p in parts], []

    def __enter__(self):
        from torch.nn.attention import sdpa_kernel

        self._open.append(sdpa_kernel(self.kinds))
        self._open[-1].__enter__()

    def __exit__(self, *exc):
        return self._open.pop().__exit__(*exc)


def fastest(candidates, widths, run, clock=time.perf_counter, repeats: int = 3) -> tuple[str, dict]:
    """The candidate whose `repeats` calls of `run(candidate, width)` for every width take the least time, and
    the seconds of each; a candidate that raises RuntimeError (no kernel of the set takes the input) is skipped.
    `run` must wait for the device (the clock measures what it returns after)."""
    seconds = {}
    for name in candidates:
        start = clock()
        try:
            for width in widths:
                for _ in range(repeats):
                    run(name, width)
        except RuntimeError as err:
            log.debug("SDPA backends %s skipped: %s", name, str(err).splitlines()[0])
            continue
        seconds[name] = clock() - start
    if not seconds:
        raise RuntimeError(f"no SDPA backend set of {', '.join(candidates)} ran the probe")
    return min(seconds, key=seconds.get), seconds


def probe_widths(widths: list[int]) -> list[int]:
    """At most PROBE_WIDTHS of `widths`, spread evenly, the widest included."""
    step = max(1, math.ceil(len(widths) / PROBE_WIDTHS))
    return sorted(set(widths[::-1][::step]))


def attention_step(device, dtype, batch: int, heads: int, head_dim: int, widths):
    """run(candidate, width): forward and backward of masked attention (half the rows padded, as in a bucketed
    batch) on inputs made up front, then a device sync."""
    from torch.nn.functional import scaled_dot_product_attention

    inputs = {}
    for width in widths:
        qkv = [torch.randn(batch, heads, width, head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3)]
        mask = torch.ones(batch, 1, width, width, dtype=torch.bool, device=device)
        mask[::2, :, :, width // 2 + 1:] = False
        inputs[width] = (qkv, mask)

    def run(candidate: str, width: int) -> None:
        qkv, mask = inputs[width]
        with Backends(candidate):
            scaled_dot_product_attention(*qkv, attn_mask=mask).sum().backward()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)
    return run


def for_model(model, device, widths: list[int], batch_size: int, env=os.environ):
    """The context to run `model`'s training and evaluation steps in (see the module's docstring)."""
    choice = env.get("TRANSFER_BENCH_SDPA", "auto").strip() or "auto"
    if choice == "default":
        return contextlib.nullcontext()
    if choice != "auto":
        return Backends(choice)
    config = model.config
    if not str(device).startswith("cuda") or getattr(config, "_attn_implementation", None) != "sdpa" or not widths:
        return contextlib.nullcontext()
    from harness.training.devices import precision

    dtype = torch.bfloat16 if precision(device) == "bf16" else torch.float32  # what autocast computes in
    heads = config.num_attention_heads
    key = (str(device), str(dtype), heads, config.hidden_size // heads)
    if key not in _chosen:
        shapes = probe_widths(widths)
        with torch.inference_mode(False), torch.enable_grad():  # predict() may be the first to ask
            run = attention_step(device, dtype, batch_size, heads, key[3], shapes)
            run("math", shapes[0])  # warm-up: allocator, kernels of the test inputs
            _chosen[key], seconds = fastest(CANDIDATES, shapes, run)
        log.info("SDPA backends %s chosen for %s (probe over widths %s: %s)", _chosen[key], key, shapes,
                 ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()))
    return Backends(_chosen[key])


def describe(device, env=os.environ) -> str:
    """What a record notes: the backends chosen on `device` in this process, the override, or torch's default."""
    choice = env.get("TRANSFER_BENCH_SDPA", "auto").strip() or "auto"
    if choice != "auto":
        return "torch default" if choice == "default" else choice
    chosen = sorted({names for key, names in _chosen.items() if key[0] == str(device)})
    return "; ".join(chosen) if chosen else "torch default"
