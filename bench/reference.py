"""Hugging Face `Trainer` on the same model, data and hyper-parameters as harness.training.loop: the reference that the
parity test (tests/test_trainer_parity.py) and the speed benchmark (bench/test_speed.py) compare the loop with.

Trainer is set up as its users set it up (run_glue style): DataCollatorWithPadding, padding each batch to its longest
example (or, as run_glue.py does by default, every example to the maximum length: pad_to_max_length), Trainer's
default optimizer (fused AdamW, no weight decay on biases and LayerNorm weights, as in harness.training.loop), the
same learning rate, linear warm-up steps, weight decay, gradient clipping, batch sizes and epochs; bf16 where the
harness uses it. Logging, checkpoints and reporting integrations are off so they cost nothing.

`same_batches=True` hands Trainer the harness's batches (harness.training.loop.length_grouped_batches, the same seed,
epoch after epoch) in place of its random sampler; everything else stays Trainer's: its loop, optimizer,
scheduler, clipping, collator and dropout draws. With the same seed both sides then see the same examples in
the same order and start from the same torch RNG state, so what is left between them is the loops themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.definitions.config import TrainConfig
from harness.definitions.data import Encoded
from harness.definitions.tasks import task_type
from harness.training.devices import precision


def to_dataset(data: Encoded, with_labels: bool = True):
    """An in-memory `datasets.Dataset` of the already tokenised examples (Trainer's input); where `datasets` is
    not installed (bench/gpu_throughput.py on a bare GPU machine), a list of example dicts, which Trainer also takes."""
    columns = {"input_ids": [x.tolist() for x in data.input_ids]}
    if data.token_type_ids is not None:
        columns["token_type_ids"] = [x.tolist() for x in data.token_type_ids]
    if with_labels:
        columns["labels"] = data.targets.tolist()
    try:
        import datasets
    except ImportError:
        return [dict(zip(columns, row)) for row in zip(*columns.values())]
    return datasets.Dataset.from_dict(columns)


class HarnessBatches:
    """A batch sampler yielding harness.training.loop's length-grouped batches: a new epoch's batches per iteration,
    drawn from one generator seeded with `seed`, as train() draws them."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int):
        self.lengths, self.batch_size = lengths, batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        from harness.training.loop import length_grouped_batches

        return iter([b.tolist() for b in length_grouped_batches(self.lengths, self.batch_size, self.rng)])

    def __len__(self) -> int:  # only the last block's last batch can be short
        return math.ceil(len(self.lengths) / self.batch_size)


def make_trainer(model, tokenizer, data: Encoded, cfg: TrainConfig, seed: int, output_dir, device="cpu",
                 pad_to_max_length: bool = False, same_batches: bool = False):
    """A Trainer that fine-tunes `model` on `data` (`trainer.train()`) with the harness's hyper-parameters;
    with `same_batches`, on the harness's batches (see the module's docstring)."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    class SameBatchesTrainer(Trainer):
        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            from harness.training.loop import lengths_of

            sampler = HarnessBatches(lengths_of(data), cfg.batch_size, seed)
            # its own generator: the loader's per-epoch seed draw must not move the global RNG (dropout's)
            return self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=sampler,
                                                       collate_fn=self.data_collator, generator=torch.Generator()))

    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        warmup_steps=int(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip,
        lr_scheduler_type="linear", seed=seed, bf16=precision(device) == "bf16", use_cpu=str(device) == "cpu",
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    collator = DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to_max_length else "longest",
                                       max_length=cfg.max_length)
    return (SameBatchesTrainer if same_batches else Trainer)(
        model=model, args=args, processing_class=tokenizer, train_dataset=to_dataset(data), data_collator=collator)


def trainer_predict(trainer, data: Encoded) -> np.ndarray:
    """Class ids (or regression scores) in the order of `data`, from `trainer.predict` (as
    harness.training.loop.predict)."""
    logits = np.asarray(trainer.predict(to_dataset(data, with_labels=False)).predictions, dtype=np.float32)
    return logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1).astype(np.float32)


LOOPS = ("harness", "trainer_same_batches", "trainer")


def compare_loops(case: "ParityCase", seed: int, output_dir, arms=LOOPS) -> dict:
    """Fine-tune the same initial model (`seed`) on `case` with each arm, on CPU, and score it on its test set.

    Arms: `harness` (harness.training.loop), `trainer_same_batches` (Trainer on the harness's batches) and `trainer`
    (Trainer with its own random sampler). Returns {arm: the task's main metric} and, when the first two both
    ran, `weight_diff`: the largest absolute difference between their trained weights (0.0: the same numbers)."""
    from harness.definitions.metrics import score
    from harness.training.loop import predict, train
    from harness.training.models import build_model

    unknown = [a for a in arms if a not in LOOPS]
    if unknown:
        raise ValueError(f"unknown arm {unknown[0]!r}: expected one of {', '.join(LOOPS)}")
    tok, cfg = case.tokenizer, case.cfg
    pad, left = tok.pad_token_id, tok.padding_side == "left"
    out, models = {}, {}
    for arm in arms:
        model = build_model(case.spec, tok, case.num_labels, cfg.max_length, seed)
        if arm == "harness":
            train(model, case.train, cfg, seed, "cpu", pad, left, desc=f"harness s{seed}")
            preds = predict(model, case.test, cfg.eval_batch_size, "cpu", pad, left)
        else:
            trainer = make_trainer(model, tok, case.train, cfg, seed, Path(output_dir) / f"{arm}-s{seed}",
                                   same_batches=arm == "trainer_same_batches")
            trainer.train()
            preds = trainer_predict(trainer, case.test)
        out[arm], models[arm] = score(case.task, case.test.targets, preds)[task_type(case.task).main_metric], model
    if "harness" in models and "trainer_same_batches" in models:
        out["weight_diff"] = max((a - b).abs().max().item() for a, b in zip(
            models["harness"].parameters(), models["trainer_same_batches"].parameters()))
    return out


PARITY_CASES = ("tiny-bert", "tiny-roberta", "tiny-xlnet", "minilm")
UCI_SOURCES = ("yelp", "amazon", "imdb")


@dataclass
class ParityCase:
    """One model on one data set with its recipe: what compare_loops trains and scores."""
    name: str
    spec: object
    tokenizer: object
    train: Encoded
    test: Encoded
    task: str
    num_labels: int
    cfg: TrainConfig


def parity_case(name: str, data_dir: Path | None, cache_dir: Path) -> ParityCase:
    """`tiny-<family>`: the tiny profile's classification/general target (256 training, 256 test examples) with
    its target recipe. `minilm`: all-MiniLM-L6-v2 on 200 UCI sentiment sentences (drawn with a fixed seed from
    yelp, amazon and imdb in `data_dir`, the folder of ../shared/data), tested on all 600 of their test
    sentences, with the minilm profile's target recipe."""
    from harness.definitions import data as D
    from harness.definitions.config import DatasetConfig
    from harness.definitions.profiles import load_profile
    from harness.running.context import RunContext, load_dataset, tokenizer_for
    from harness.training.tokenizers import load_tokenizer

    if name not in PARITY_CASES:
        raise ValueError(f"unknown parity case {name!r}: expected one of {', '.join(PARITY_CASES)}")
    if name.startswith("tiny-"):
        profile = load_profile("tiny", None, cache_dir)
        ctx = RunContext(profile, Path(cache_dir) / "parity-results", Path(cache_dir), seeds=[0])
        data = load_dataset(ctx, profile.targets[("classification", "general")])
        tok, cfg = tokenizer_for(ctx, name[5:]), profile.target_train
        enc = [D.encode(tok, s, cfg.max_length, data.labels) for s in (data.train, data.tests[data.dataset.language])]
        return ParityCase(name, profile.models[name[5:]], tok, *enc, "classification", len(data.labels), cfg)
    profile = load_profile("minilm", data_dir, cache_dir)  # a one-line ValueError without data or weights

    def uci(split: str) -> D.Split:
        parts = [D.load_split(DatasetConfig(f"uci-{s}", "sentiment", "general", path=f"uci_sentiment/{s}"),
                              Path(data_dir), split) for s in UCI_SOURCES]
        return D.Split("uci_sentiment/*", sum((p.texts for p in parts), []), None, sum((p.labels for p in parts), []))

    full, test = uci("train"), uci("test")
    keep = np.random.default_rng(0).permutation(len(full))[:200]
    train_split = D.Split(full.file, [full.texts[i] for i in keep], None, [full.labels[i] for i in keep])
    labels = task_type("sentiment").label_set(train_split.labels)
    spec, cfg = profile.models["bert"], profile.target_train
    tok = load_tokenizer(spec, [], Path(cache_dir))
    enc = [D.encode(tok, s, cfg.max_length, labels) for s in (train_split, test)]
    return ParityCase(name, spec, tok, *enc, "sentiment", len(labels), cfg)
