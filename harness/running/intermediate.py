"""The intermediate model of a (model, task, seed): the encoder after training on the task's intermediate data
set, trained once per run context and cached under the cache directory for every cell, worker and later run that
shares its configuration (its key: intermediate_key)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.definitions.grid import Cell
from harness.definitions.tasks import task_type
from harness.fileio import atomic_dir, fingerprint
from harness.running.cache import tokenizer_digest
from harness.running.context import RunContext, encode, load_dataset, tokenizer_for
from harness.running.heads import cell_heads, heads_key
from harness.training.devices import precision
from harness.training.grouped import STREAM
from harness.training.loop import train
from harness.training.models import body_state, build_model
from harness.training.together import PAIRING


def intermediate_body(ctx: RunContext, cell: Cell, seed: int, together=None) -> tuple[dict, dict]:
    """The encoder after intermediate training for (model, task, seed): trained once, cached on disk.

    Returns the body weights and metadata (key, whether it was trained by this call, seconds, examples/s).
    `together(models, data=, seeds=) -> infos` (harness.training.together.train_together with the rest bound): the
    run's seeds train their intermediate models as one group (its own cache key). The first seed of the group whose
    model is not cached trains them all and, while it holds its lock, writes the folders of the seeds after it
    (locks are always taken in seed order, so no two processes deadlock): a worker waiting on any of them finds
    them all; its `seconds` are the group's.
    """
    from safetensors.torch import load_file, save_file

    p = ctx.profile
    row = p.models[cell.model]
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)
    tok = tokenizer_for(ctx, cell.model)
    group = list(ctx.seeds) if together is not None else None
    keys = {s: intermediate_key(ctx, cell, s, group) for s in group or [seed]}
    folder_of = lambda s: ctx.cache_dir / "intermediate" / f"{cell.model}-{cell.task}-s{s}-{keys[s]}"  # noqa: E731
    trained = {}
    pooling, head = cell_heads(p, cell)

    def write(tmp: Path, model, info: dict, s: int) -> None:
        save_file(body_state(model), str(tmp / "body.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"key": keys[s], **info}, indent=1))

    def build(tmp: Path):
        num_labels = task_type(cell.task).num_labels(inter.labels)
        enc = encode(ctx, tok, cell.model, inter.train, p.intermediate_train.max_length, inter.labels,
                      separate=head == "bi")
        seeds = group or [seed]
        models = [build_model(row, tok, num_labels, p.intermediate_train.max_length, s, pooling, head)
                  for s in seeds]
        if together is None:
            infos = [train(models[0], enc, p.intermediate_train, seed, ctx.device, tok.pad_token_id,
                           tok.padding_side == "left", desc=f"{cell.model}-{cell.task} intermediate s{seed}",
                           compile=ctx.compile)]
        else:
            infos = together(models, data=enc, seeds=seeds)
        for s, model, info in zip(seeds, models, infos):
            if s == seed:
                write(tmp, model, info, s)
            elif seeds.index(s) > seeds.index(seed):
                atomic_dir(folder_of(s), lambda t, m=model, i=info, s=s: write(t, m, i, s))
        trained.update(infos[seeds.index(seed)], seconds=sum(i["seconds"] for i in infos))

    folder = atomic_dir(folder_of(seed), build)
    meta = {"key": keys[seed], "trained_here": bool(trained),
            "seconds": trained.get("seconds", 0.0), "examples_per_s": trained.get("examples_per_s"),
            "examples": len(inter.train), **({"group": group} if group else {})}
    return load_file(str(folder / "body.safetensors")), meta


def intermediate_key(ctx: RunContext, cell: Cell, seed: int, group: list | None = None) -> str:
    """The cache key of a (model, task, seed) intermediate model: a function of the configuration only (`group`:
    the seeds it was trained together with, harness.training.together)."""
    import transformers
    p = ctx.profile
    inter = load_dataset(ctx, p.intermediates[cell.task], with_tests=False)
    return fingerprint("intermediate", p.models[cell.model].describe, inter.digest, p.intermediate_train, seed,
                       tokenizer_digest(tokenizer_for(ctx, cell.model)), precision(ctx.device), torch.__version__,
                       transformers.__version__, *heads_key(p, cell),
                       *([{"ensemble": group, "dropout": STREAM, "pairing": PAIRING}] if group else []))
