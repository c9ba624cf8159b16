"""Throughput accounting for a cell record: model FLOPs, the device's peak, FLOP utilisation (MFU), peak memory.

FLOPs of one example of T real tokens through a transformer encoder (Kaplan et al. 2020, PaLM appendix B):
forward 2·N·T + 4·L·d·T² (N non-embedding parameters, L layers, d hidden size; the second term is QKᵀ and
attention·V); training costs three forwards (the backward pass costs two). Padding is not counted: it is waste,
not work, so MFU shows what length grouping saves. XLNet's relative-position attention is not counted either,
so its MFU is a slight underestimate.

Peak FLOP/s: on a GPU the vendor's dense figure for the precision in use, looked up by device name; elsewhere
(and for unknown GPUs) the best of a few large matmuls measured in this process with its torch threads, so on a
shared CPU the peak is what this process could get, and MFU how much of that the training loop used.
"""
from __future__ import annotations

import functools
import resource
import sys
import time

import numpy as np
import torch

# Dense (no sparsity) tensor-core bf16 and plain fp32 TFLOP/s from the vendors' data sheets; first match wins.
GPU_PEAK_TFLOPS = [
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
]


def forward_flops(model, lengths: np.ndarray) -> float:
    """FLOPs of one forward pass over examples of the given real lengths (tokens)."""
    config = model.config
    n = model.num_parameters(exclude_embeddings=True)
    t = np.asarray(lengths, dtype=np.float64)
    return float(2 * n * t.sum() + 4 * config.num_hidden_layers * config.hidden_size * (t ** 2).sum())


def train_flops(model, lengths: np.ndarray, epochs: int) -> float:
    return 3 * epochs * forward_flops(model, lengths)


@functools.lru_cache(maxsize=None)
def measured_peak(device: str, dtype: torch.dtype, threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of `repeats` square matmuls of `size` on `device` (cached per device, dtype and thread count)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_flops(device: str, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for `device` at `precision` (`bf16` or `fp32`)."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name:
                return peaks[precision] * 1e12, f"{name} data sheet, dense {precision}"
        dtype, size = (torch.bfloat16 if precision == "bf16" else torch.float32), 8192
        return measured_peak(str(device), dtype, 1, size), f"measured {precision} matmul {size}x{size} on {name}"
    threads, dtype = torch.get_num_threads(), (torch.bfloat16 if precision == "bf16" else torch.float32)
    return measured_peak("cpu", dtype, threads), f"measured {precision} matmul 1024x1024, {threads} thread(s)"


def reset_peak_memory(device: str) -> None:
    """Start a cell's GPU memory high-water mark (the CPU's resident-set peak cannot be reset)."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> dict:
    """GPU: max bytes allocated by tensors since reset_peak_memory. CPU: the process's peak resident set so far
    (a process running several cells reports the largest of them)."""
    if str(device).startswith("cuda"):
        return {"bytes": int(torch.cuda.max_memory_allocated(torch.device(device))), "kind": "cuda_max_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"bytes": int(rss if sys.platform == "darwin" else rss * 1024), "kind": "max_rss"}


def throughput(train_flop_count: float, train_s: float, eval_flop_count: float, eval_s: float, device: str,
               precision: str) -> dict:
    """The record's `throughput` block: FLOPs, achieved FLOP/s, the assumed peak and MFU per phase."""
    peak, source = peak_flops(device, precision)
    block = {"peak_flop_per_s": peak, "peak_source": source, "precision": precision}
    for phase, count, seconds in (("train", train_flop_count, train_s), ("eval", eval_flop_count, eval_s)):
        rate = count / seconds if seconds > 0 else None
        block.update({f"{phase}_flops": count, f"{phase}_flop_per_s": rate,
                      f"{phase}_mfu": rate / peak if rate is not None else None})
    return block
