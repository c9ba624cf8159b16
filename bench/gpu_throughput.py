"""Training examples/s and MFU of a bert-base-sized model through the harness loop on a GPU, with and without
bf16 autocast and SDPA attention (and torch.compile), plus Hugging Face Trainer on the bf16 + SDPA setting.

    python bench/gpu_throughput.py [--examples 4096] [--batch-size 32] [--max-length 128] [--out FILE.json]

(`--device cpu --examples 64 --max-length 32` is a smoke run of the script itself: no bf16, no compile there.)

No download: the model is BertConfig()'s bert-base shape (110M parameters) randomly initialised, the data random
token ids with lengths uniform in [max_length/8, max_length] (so length grouping matters as it does on text).
Each setting trains one epoch after a short warm-up run; MFU is against the data-sheet peak of the precision in
use (harness.flops.GPU_PEAK_TFLOPS; fp32 without TF32 is measured against the plain fp32 peak).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from harness import flops
from harness import train as loop
from harness.data import Encoded
from harness.config import TrainConfig

log = logging.getLogger("gpu_throughput")
SETTINGS = [  # name, bf16, attention, compile
    ("fp32 eager", False, "eager", False),
    ("fp32 sdpa", False, "sdpa", False),
    ("bf16 eager", True, "eager", False),
    ("bf16 sdpa", True, "sdpa", False),
    ("bf16 sdpa compile", True, "sdpa", True),
]


def synthetic(n: int, max_length: int, vocab: int, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max_length // 8, max_length + 1, size=n)
    ids = [np.concatenate([[101], rng.integers(1000, vocab, size=t - 2), [102]]).astype(np.int64) for t in lengths]
    return Encoded(ids, [np.zeros(t, dtype=np.int64) for t in lengths], rng.integers(0, 2, size=n))


def bert_base(attention: str):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation=attention))


def reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def max_allocated_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def run_harness(data: Encoded, cfg: TrainConfig, bf16: bool, attention: str, compile: bool, device: str) -> dict:
    """One epoch through harness.train; fp32 settings turn the loop's autocast off."""
    model = bert_base(attention).to(device)
    original = loop.autocast
    loop.autocast = original if bf16 else (lambda device: contextlib.nullcontext())
    try:
        warm = Encoded(data.input_ids[:8 * cfg.batch_size], data.token_type_ids[:8 * cfg.batch_size],
                       data.targets[:8 * cfg.batch_size])
        loop.train(model, warm, cfg, 0, device, 0, False, compile=compile)  # warm-up (and compilation)
        reset_memory(device)
        info = loop.train(model, data, cfg, 0, device, 0, False, compile=compile)
    finally:
        loop.autocast = original
    return {**info, "flops": flops.train_flops(model, loop.lengths_of(data), cfg.epochs),
            "max_allocated_gib": max_allocated_gib(device)}


def run_trainer(data: Encoded, cfg: TrainConfig, device: str) -> dict:
    """The same epoch through Hugging Face Trainer (bf16, SDPA, dynamic padding)."""
    import time

    from transformers import BertTokenizerFast

    from harness.reference import make_trainer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"  # a tokenizer only for the collator's padding (pad id 0)
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
        tok = BertTokenizerFast(vocab_file=str(vocab))
        model = bert_base("sdpa")
        make_trainer(model, tok, replace_data(data, 8 * cfg.batch_size), cfg, 0, tmp, device).train()  # warm-up
        trainer = make_trainer(model, tok, data, cfg, 0, tmp, device)
        reset_memory(device)
        start = time.perf_counter()
        trainer.train()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    examples = cfg.epochs * len(data)
    return {"seconds": seconds, "examples": examples, "examples_per_s": examples / seconds,
            "flops": flops.train_flops(model, loop.lengths_of(data), cfg.epochs),
            "max_allocated_gib": max_allocated_gib(device)}


def replace_data(data: Encoded, n: int) -> Encoded:
    return Encoded(data.input_ids[:n], data.token_type_ids[:n], data.targets[:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run of the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script measures GPU training (see bench/test_speed.py for CPU)")
    cfg = replace(TrainConfig(), lr=2e-5, epochs=1, batch_size=args.batch_size, max_length=args.max_length)
    data = synthetic(args.examples, args.max_length, 30522)
    gpu = device.startswith("cuda")
    name = torch.cuda.get_device_name() if gpu else "cpu"
    rows = []
    for label, bf16, attention, compile in SETTINGS:
        if gpu or not (bf16 or compile):
            info = run_harness(data, cfg, bf16, attention, compile, device)
            rows.append(_row(f"harness {label}", info, "bf16" if bf16 else "fp32", device))
    trainer_precision = "bf16" if gpu else "fp32"
    rows.append(_row(f"Trainer {trainer_precision} sdpa", run_trainer(data, cfg, device), trainer_precision, device))
    for row in rows:
        log.info("%-28s %8.1f ex/s  MFU %5.1f%%  peak mem %5.1f GiB", row["setting"], row["examples_per_s"],
                 100 * row["mfu"], row["max_allocated_gib"])
    result = {"device": name, "torch": torch.__version__, "examples": args.examples, "batch_size": args.batch_size,
              "max_length": args.max_length, "steps": math.ceil(args.examples / args.batch_size), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


def _row(setting: str, info: dict, precision: str, device: str) -> dict:
    peak, source = flops.peak_flops(device, precision)
    return {"setting": setting, "examples_per_s": info["examples_per_s"], "seconds": info["seconds"],
            "mfu": info["flops"] / info["seconds"] / peak, "peak_flop_per_s": peak, "peak_source": source,
            "max_allocated_gib": info["max_allocated_gib"]}


if __name__ == "__main__":
    main()
