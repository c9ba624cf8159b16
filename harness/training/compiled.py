"""Compiled training steps: one graph per shape bucket, counted.

torch.compile(dynamic=True) over batches of ~110 different widths spent over 75 s in its first steps on an H200
(docs/performance.md). With shape buckets (harness.training.buckets) full batches take a handful of shapes, so each
is compiled once with static shapes (dynamic=False: kernels specialised to the shape, no symbolic-shape recompiles).
A batch of another size (the short last batch of a block) runs eagerly rather than adding a graph, and a batch
without an attention mask gets an all-ones one (which changes no number), so masked and unmasked batches share a
graph.
"""
from __future__ import annotations

import functools

import torch


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles and hands them to the backend `name`."""

    def __init__(self, name: str):
        self.name, self.graphs = name, 0

    def __call__(self, graph, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend(self.name)(graph, example_inputs)


@functools.lru_cache(maxsize=None)
def counting_backend(name: str) -> CountingBackend:
    """One backend object per name for the process: dynamo reuses the graphs compiled for the same backend, so
    the next train() call on the same shapes compiles nothing."""
    return CountingBackend(name)


class CompiledSteps:
    """`model`'s forward, compiled once per width for batches of `batch_size` examples (see the module docstring).

    `backend`: a torch.compile backend name (`inductor`, or `eager` to test the bookkeeping cheaply on CPU)."""

    def __init__(self, model, batch_size: int, widths: int, backend: str = "inductor"):
        self.model, self.batch_size = model, batch_size
        self.backend = counting_backend(backend)
        self.start = self.backend.graphs
        # dynamo stops compiling (and runs eagerly) after `recompile_limit` shapes of one function: allow every bucket
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, widths + 1)
        self.compiled = torch.compile(model, dynamic=False, backend=self.backend)

    def __call__(self, **batch):
        if len(batch["input_ids"]) != self.batch_size:
            return self.model(**batch)
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return self.compiled(**batch)

    @property
    def compiles(self) -> int:
        """Graphs compiled since this object was made (by any model on the same backend)."""
        return self.backend.graphs - self.start
