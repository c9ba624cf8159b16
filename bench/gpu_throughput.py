"""Training examples/s, MFU and peak memory of a bert-base-sized model through the harness loop on a GPU, per
setting (shape buckets, SDPA backends, torch.compile), batch size and epoch, next to Hugging Face Trainer's figure
from the same run. One table; made to finish in well under three minutes on an H100/H200.

    python bench/gpu_throughput.py [--batch-sizes 32,128] [--epochs 2] [--examples 4096] [--max-length 128]
                                   [--settings exact,b8,b16,b32,trainer] [--compile] [--out FILE.json]

Without a GPU (or with --smoke) it runs the same code on tiny shapes on the CPU, as a smoke test of the script.

No download, no `datasets`: the model is BertConfig()'s bert-base shape (110M parameters) randomly initialised,
the data random token ids with lengths uniform in [max_length/8, max_length]. Each setting runs in a fresh
process (so its first epoch pays what a fresh run pays: attention plans, probes, compilation; CUDA's context and
cuBLAS are warmed up first, for every setting alike), through harness.training.loop one epoch at a time on one model per
batch size; its batch sizes run one after the other in that process. Settings:
- exact: batches padded to their longest example, torch's own SDPA backend choice (the GPU path before shape
  buckets and the backend probe);
- b8, b16, b32: widths rounded up to multiples of 8/16/32 and the SDPA backends chosen by the probe
  (harness.training.attention); b16 is the harness's GPU default (harness.training.buckets.GPU_MULTIPLE);
- compile (with --compile; minutes, not seconds): b16 with compiled steps, one graph per bucket;
- trainer: Trainer (bf16 where the harness uses it, SDPA, dynamic padding), one trainer.train() per epoch;
- ensemble: three seeds' models trained together (harness.training.together, pytest --ensemble); its examples/s
  and MFU count the three models' work (compare with 3 x b16's seconds for the same work).
MFU counts real tokens only (harness.training.flops) against the data-sheet dense peak of the precision in use. After the
table, the top kernels of a few training steps of b16 at the largest batch size (what limits MFU). The settings
that leave them alone take TRANSFER_BENCH_SDPA / TRANSFER_BENCH_BUCKETS from the caller, e.g.
`TRANSFER_BENCH_SDPA=flash,efficient,math python bench/gpu_throughput.py --settings b16,trainer`.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from harness.definitions.config import TrainConfig
from harness.definitions.data import Encoded
from harness.training import attention, flops, loop
from harness.training.devices import precision

log = logging.getLogger("gpu_throughput")
SETTINGS = {  # key: (label, environment of its process: harness.training.buckets and harness.training.attention read it)
    "exact": ("exact widths", {"TRANSFER_BENCH_BUCKETS": "exact", "TRANSFER_BENCH_SDPA": "default"}),
    "b8": ("buckets of 8", {"TRANSFER_BENCH_BUCKETS": "8"}),
    "b16": ("buckets of 16 (default)", {}),
    "b32": ("buckets of 32", {"TRANSFER_BENCH_BUCKETS": "32"}),
    "compile": ("buckets of 16 + compile", {}),
    "trainer": ("Trainer", {}),
    "ensemble": ("3 seeds together (--ensemble)", {}),
}
ENSEMBLE_SEEDS = (0, 1, 2)
PROFILED = "b16"


@dataclass
class Options:
    device: str
    smoke: bool
    examples: int
    max_length: int
    batch_sizes: list
    epochs: int
    profile: bool


def synthetic(n: int, max_length: int, vocab: int, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, max_length // 8), max_length + 1, size=n)
    ids = [np.concatenate([[101], rng.integers(1000, vocab, size=t - 2), [102]]).astype(np.int64) for t in lengths]
    return Encoded(ids, [np.zeros(t, dtype=np.int64) for t in lengths], rng.integers(0, 2, size=n))


def bert(opts: Options, seed: int = 0):
    """bert-base's shape (or a tiny one for the smoke run), SDPA attention, randomly initialised (`seed`)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                vocab_size=2000, max_position_embeddings=64) if opts.smoke else {}
    return BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa", **size))


def warm_up(device: str) -> None:
    """CUDA's context, the allocator and cuBLAS, before any timed epoch (attention kernels stay cold)."""
    x = torch.randn(256, 256, device=device)
    with loop.autocast(device):
        (x @ x).sum().item()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def harness_epochs(key: str, model, data: Encoded, cfg: TrainConfig, opts: Options):
    """(seconds, peak GiB, graphs compiled) of each epoch through harness.training.loop (probe and compilation included)."""
    for epoch in range(opts.epochs):
        if opts.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        info = loop.train(model, data, cfg, epoch, opts.device, 0, False, compile=key == "compile")
        _sync(opts.device)
        yield time.perf_counter() - start, peak_gib(opts.device), info["compiles"]


def ensemble_epochs(models: list, data: Encoded, cfg: TrainConfig, opts: Options):
    """(seconds, peak GiB, None) of each epoch of the models trained together (harness.training.together)."""
    from harness.training.together import train_together

    for epoch in range(opts.epochs):
        if opts.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train_together(models, "bert", data, cfg, [epoch * 10 + s for s in ENSEMBLE_SEEDS], opts.device, 0, False)
        _sync(opts.device)
        yield time.perf_counter() - start, peak_gib(opts.device), None


def trainer_epochs(model, data: Encoded, cfg: TrainConfig, opts: Options):
    """(seconds, peak GiB, None) of each epoch through Trainer (one trainer.train() per epoch)."""
    from reference import make_trainer
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"  # a tokenizer only for the collator's padding (pad id 0)
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
        trainer = make_trainer(model, BertTokenizerFast(vocab_file=str(vocab)), data, cfg, 0, tmp, opts.device)
        for _ in range(opts.epochs):
            if opts.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            trainer.train()
            _sync(opts.device)
            yield time.perf_counter() - start, peak_gib(opts.device), None


def top_kernels(model, data: Encoded, cfg: TrainConfig, opts: Options, count: int = 10) -> list[dict]:
    """The `count` kernels (CPU ops on CPU) with the most self time over a few warm training steps, and their
    share of the total."""
    from torch.profiler import ProfilerActivity, profile

    steps = Encoded(data.input_ids[:4 * cfg.batch_size], data.token_type_ids[:4 * cfg.batch_size],
                    data.targets[:4 * cfg.batch_size])
    gpu = opts.device.startswith("cuda")
    loop.train(model, steps, cfg, 0, opts.device, 0, False)  # these shapes warm
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        loop.train(model, steps, cfg, 0, opts.device, 0, False)
        _sync(opts.device)
    events = [e for e in prof.key_averages() if (e.device_type.name == "CUDA") == gpu]
    attr = "self_device_time_total" if gpu else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"kernel": e.key, "ms": getattr(e, attr) / 1e3, "share": getattr(e, attr) / total} for e in events[:count]]


def measure(key: str, opts: Options) -> dict:
    """Every batch size and epoch of one setting, in this (fresh) process."""
    os.environ.update(SETTINGS[key][1])
    loop._quiet = lambda: True  # no progress bars between the table's lines
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warm_up(opts.device)
    data = synthetic(opts.examples, opts.max_length, 2000 if opts.smoke else 30522)
    peak, _ = flops.peak_flops(opts.device, precision(opts.device))
    rows, kernels = [], None
    for batch_size in opts.batch_sizes:
        cfg = replace(TrainConfig(), lr=2e-5, epochs=1, batch_size=batch_size, max_length=opts.max_length)
        model = bert(opts).to(opts.device)
        work = flops.train_flops(model, loop.lengths_of(data), 1)
        members = len(ENSEMBLE_SEEDS) if key == "ensemble" else 1
        if key == "ensemble":
            epochs = ensemble_epochs([model] + [bert(opts, s).to(opts.device) for s in ENSEMBLE_SEEDS[1:]], data,
                                     cfg, opts)
        elif key == "trainer":
            epochs = trainer_epochs(model, data, cfg, opts)
        else:
            epochs = harness_epochs(key, model, data, cfg, opts)
        try:
            for epoch, (seconds, memory, compiles) in enumerate(epochs, 1):
                rows.append({"setting": SETTINGS[key][0], "batch_size": batch_size, "epoch": epoch,
                             "seconds": seconds, "examples_per_s": members * len(data) / seconds,
                             "mfu": members * work / seconds / peak,
                             "peak_memory_gib": memory, "compiles": compiles})
        except ImportError as err:  # Trainer needs accelerate; a bare GPU machine may lack it
            if key != "trainer":
                raise
            log.warning("Trainer skipped (%s): no ratios in this run", err)
            break
        if opts.profile and key == PROFILED and batch_size == max(opts.batch_sizes):
            kernels = top_kernels(model, data, cfg, opts)
    return {"rows": rows, "kernels": kernels, "sdpa_backends": attention.describe(opts.device)}


def run_isolated(key: str, opts: Options) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, key, opts).result()


def with_trainer_ratio(rows: list[dict]) -> list[dict]:
    trainer = {(r["batch_size"], r["epoch"]): r["examples_per_s"] for r in rows if r["setting"] == "Trainer"}
    for r in rows:
        theirs = trainer.get((r["batch_size"], r["epoch"]))
        r.update(trainer_examples_per_s=theirs, ratio_to_trainer=r["examples_per_s"] / theirs if theirs else None)
    return rows


HEADER = ("setting", "batch", "epoch", "ex/s", "MFU", "peak GiB", "compiles", "Trainer ex/s", "ratio to Trainer")


def table(rows: list[dict]) -> str:
    """One markdown table, numbers right-aligned, `-` where a figure does not apply."""
    cell = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    body = [[r["setting"], str(r["batch_size"]), str(r["epoch"]), f"{r['examples_per_s']:.1f}",
             f"{100 * r['mfu']:.1f}%", cell(r["peak_memory_gib"], ".2f"), cell(r["compiles"], "d"),
             cell(r["trainer_examples_per_s"], ".1f"), cell(r["ratio_to_trainer"], ".2f")] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None, help="training examples (4096; smoke: 96)")
    parser.add_argument("--max-length", type=int, default=None, help="longest example (128; smoke: 32)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (32,128; smoke: 8,16)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--settings", default="exact,b8,b16,b32,trainer",
                        help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--compile", action="store_true", help="add the compiled setting (minutes on a GPU)")
    parser.add_argument("--no-profile", action="store_true", help="skip the top kernels of a few b16 steps")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (automatic without a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    smoke = args.smoke or not torch.cuda.is_available()
    keys = [k.strip() for k in args.settings.split(",") if k.strip()] + (["compile"] if args.compile else [])
    unknown = [k for k in keys if k not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})")
    opts = Options(device="cpu" if smoke else "cuda", smoke=smoke, examples=args.examples or (96 if smoke else 4096),
                   max_length=args.max_length or (32 if smoke else 128), epochs=args.epochs,
                   batch_sizes=[int(b) for b in (args.batch_sizes or ("8,16" if smoke else "32,128")).split(",")],
                   profile=not args.no_profile)
    if smoke:
        log.info("smoke run on the CPU (tiny shapes): these figures say nothing about GPU speed")
    start, results = time.perf_counter(), {}
    for key in keys:
        results[key] = run_isolated(key, opts)
        log.info("%s done (%.0f s so far; SDPA backends: %s)", SETTINGS[key][0], time.perf_counter() - start,
                 results[key]["sdpa_backends"])
    rows = with_trainer_ratio([r for key in keys for r in results[key]["rows"]])
    name = "cpu" if smoke else torch.cuda.get_device_name()
    print(f"\n{name}, torch {torch.__version__}, {opts.examples} examples of lengths {max(2, opts.max_length // 8)}-"
          f"{opts.max_length}, {precision(opts.device)}; {time.perf_counter() - start:.0f} s in all\n")
    print(table(rows))
    kernels = results.get(PROFILED, {}).get("kernels")
    if kernels:
        print(f"\ntop kernels of {SETTINGS[PROFILED][0]}, batch {max(opts.batch_sizes)} (share of device time):")
        for k in kernels:
            print(f"  {100 * k['share']:5.1f}%  {k['ms']:8.2f} ms  {k['kernel'][:100]}")
    if args.out:
        args.out.write_text(json.dumps({"device": opts.device, "device_name": name, "torch": torch.__version__,
                                        **asdict(opts), "steps_per_epoch": {b: math.ceil(opts.examples / b)
                                                                            for b in opts.batch_sizes},
                                        "sdpa_backends": {k: v["sdpa_backends"] for k, v in results.items()},
                                        "rows": rows, "kernels": kernels}, indent=1))


if __name__ == "__main__":
    main()
