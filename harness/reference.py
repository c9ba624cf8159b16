"""Hugging Face `Trainer` on the same model, data and hyper-parameters as harness.train: the reference that the
parity test (tests/test_trainer_parity.py) and the speed benchmark (bench/test_speed.py) compare the loop with.

Trainer is set up as its users set it up (run_glue style): DataCollatorWithPadding, padding each batch to its
longest example (or, as run_glue.py does by default, every example to the maximum length: pad_to_max_length),
Trainer's default optimizer (fused AdamW, no weight decay on biases and LayerNorm weights, as in train.py), the
same learning rate, linear warm-up steps, weight decay, gradient clipping, batch sizes and epochs; bf16 where the
harness uses it. Logging, checkpoints and reporting integrations are off so they cost nothing.
"""
from __future__ import annotations

import math

import numpy as np

from harness.data import Encoded
from harness.devices import precision
from harness.profiles import TrainConfig


def to_dataset(data: Encoded, with_labels: bool = True):
    """An in-memory `datasets.Dataset` of the already tokenised examples (Trainer's input)."""
    import datasets

    columns = {"input_ids": [x.tolist() for x in data.input_ids]}
    if data.token_type_ids is not None:
        columns["token_type_ids"] = [x.tolist() for x in data.token_type_ids]
    if with_labels:
        columns["labels"] = data.targets.tolist()
    return datasets.Dataset.from_dict(columns)


def make_trainer(model, tokenizer, data: Encoded, cfg: TrainConfig, seed: int, output_dir, device="cpu",
                 pad_to_max_length: bool = False):
    """A Trainer that fine-tunes `model` on `data` (`trainer.train()`) with the harness's hyper-parameters."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        warmup_steps=int(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip,
        lr_scheduler_type="linear", seed=seed, bf16=precision(device) == "bf16", use_cpu=str(device) == "cpu",
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    return Trainer(model=model, args=args, processing_class=tokenizer, train_dataset=to_dataset(data),
                   data_collator=DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to_max_length
                                                         else "longest", max_length=cfg.max_length))


def trainer_predict(trainer, data: Encoded) -> np.ndarray:
    """Class ids (or regression scores) in the order of `data`, from `trainer.predict` (as harness.predict)."""
    logits = np.asarray(trainer.predict(to_dataset(data, with_labels=False)).predictions, dtype=np.float32)
    return logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1).astype(np.float32)
