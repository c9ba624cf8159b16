"""Shape buckets: the padded widths batches take, per device.

On a GPU every new (batch size, width) shape costs: cuDNN's attention plans a kernel per shape, and a compiled
step compiles a graph per shape. Padding a batch up to the next multiple of a few tokens (16 by default, capped
at the maximum length) leaves at most max_length/16 widths, so those costs are paid a handful of times instead
of once per length; the padding costs a little compute. On CPU there is nothing to amortise and padding is pure
waste, so CPU batches keep their exact widths (and the same seed gives the same numbers as before).

TRANSFER_BENCH_BUCKETS overrides the multiple on any device (`exact` or `1`: exact widths; `16`: multiples of 16);
bench/gpu_throughput.py measures the candidates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

GPU_MULTIPLE = 16  # the best of 8/16/32 on an H200 (bert-base, lengths 16-128; docs/performance.md)
GPU_EVAL_BATCH = 512  # examples per evaluation batch on a GPU (at the mean length; longer ones get fewer)


@dataclass(frozen=True)
class Buckets:
    """Batch widths rounded up to a multiple of `multiple`, never beyond `cap` (the longest an example can be)."""
    multiple: int = 1
    cap: int | None = None

    def width(self, longest: int) -> int:
        """The padded width of a batch whose longest example has `longest` tokens."""
        if self.multiple <= 1:
            return longest
        rounded = -(-longest // self.multiple) * self.multiple
        return rounded if self.cap is None else min(rounded, max(longest, self.cap))

    def widths(self) -> list[int]:
        """Every width a batch can take (needs a cap); with exact widths, every length up to the cap."""
        return sorted({self.width(n) for n in range(1, (self.cap or 0) + 1)})

    def describe(self) -> str:
        return "exact" if self.multiple <= 1 else f"multiple of {self.multiple}, capped at the maximum length"


def multiple_for(device, env=os.environ) -> int:
    """TRANSFER_BENCH_BUCKETS if set, else GPU_MULTIPLE on CUDA and 1 (exact widths) elsewhere."""
    value = env.get("TRANSFER_BENCH_BUCKETS", "").strip().lower()
    if value:
        if value == "exact":
            return 1
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"TRANSFER_BENCH_BUCKETS={value!r}: expected `exact` or a positive whole number")
        return int(value)
    return GPU_MULTIPLE if str(device).startswith("cuda") else 1


def for_device(device, cap: int | None, env=os.environ) -> Buckets:
    return Buckets(multiple_for(device, env), cap)


def eval_batch_size(device, batch_size: int) -> int:
    """Large evaluation batches on a GPU (the eval set is small: a few launches should do); as asked elsewhere."""
    return max(batch_size, GPU_EVAL_BATCH) if str(device).startswith("cuda") else batch_size
