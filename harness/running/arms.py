"""How a cell's arms are trained: three strategies that each return, per (arm, seed), one `ArmRun`.

- `sequential`: the profile's recipe, one training run (untuned cells, one after another);
- `tuned`: a run per learning rate of the search space, scored on validation after each epoch, stopped early, the
  best (learning rate, epoch) kept (harness.running.tuning); only validation labels are read here;
- `grouped` (`--train-together`): every seed and both arms of an untuned cell as one grouped model
  (harness.training.together), and the seeds' intermediate models likewise.

In an A/A run (`--calibration`) the intermediate arm is a second direct arm: no intermediate model, and its own seed
stream (`arm_seed`: initialisation, data order, dropout), so every true gain is zero.

Each strategy builds its models from the cell's `Setup` (`fresh`): the checkpoint, the intermediate body for the
intermediate arm, and with `head_init = "probe"` the output layer started from the linear probe
(harness.running.probe, fit once per arm and seed and shared by that arm's runs).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from harness.definitions.config import ModelConfig, TrainConfig
from harness.definitions.data import Encoded
from harness.definitions.grid import ARMS, Cell
from harness.definitions.metrics import FUNCTIONS
from harness.definitions.space import SearchSpace
from harness.running import probe, tuning
from harness.running.context import RunContext
from harness.running.intermediate import intermediate_body
from harness.training.loop import predict, train
from harness.training.models import build_model
from harness.training.together import train_together


@dataclass
class Setup:
    """What every training run of a cell reads: the model row, its tokenizer, heads and recipe, the encoded
    training (and, when tuning, validation) split and the main metric."""
    ctx: RunContext
    cell: Cell
    row: ModelConfig
    tokenizer: object
    num_labels: int
    hp: TrainConfig
    pooling: str
    head: str
    head_init: str
    train_enc: Encoded
    val_enc: Encoded | None
    metric: str

    @property
    def pad(self) -> tuple[int, bool]:
        """(pad token id, left padding) of the tokenizer."""
        return self.tokenizer.pad_token_id, self.tokenizer.padding_side == "left"


@dataclass
class ArmRun:
    """One arm and seed: the trained model, the training info (harness.training.loop.train), the epochs behind the
    evaluated model, the search result when tuned, the intermediate model's metadata for the intermediate arm and
    the probe's record when its head started from one."""
    model: object
    info: dict
    epochs: int
    selected: dict | None = None
    intermediate: dict | None = None
    probe: dict | None = None


CALIBRATION_SEEDS = 1_000_000  # an A/A run's second direct arm of seed s trains with seed CALIBRATION_SEEDS + s


def arm_seed(ctx: RunContext, arm: str, seed: int) -> int:
    """The seed an arm's model is built and trained with: the run's seed, except for the second direct arm of an A/A
    run, which gets a stream of its own (one no run's seeds reach)."""
    return CALIBRATION_SEEDS + seed if ctx.calibration and arm == "intermediate" else seed


def start(setup: Setup, arm: str, seed: int):
    """(body, metadata): the intermediate arm's encoder weights (trained once, cached), (None, None) for direct and
    for both arms of an A/A run."""
    if arm != "intermediate" or setup.ctx.calibration:
        return None, None
    return intermediate_body(setup.ctx, setup.cell, seed)


def fresh_factory(setup: Setup, seed: int, body, probed: list):
    """`fresh()`: a new model of the arm (the body loaded), its head from the probe when the cell asks for one (the
    probe fit on the first call, its record appended to `probed`, its state shared by the later calls)."""
    pad, left = setup.pad
    state = {}

    def fresh():
        model = build_model(setup.row, setup.tokenizer, setup.num_labels, setup.hp.max_length, seed, setup.pooling,
                            setup.head)
        if body is not None:
            model.base_model.load_state_dict(body)
        if setup.head_init == "probe":
            if not state:
                head, meta = probe.fit_head(model, setup.num_labels, setup.train_enc, setup.val_enc, setup.metric,
                                            setup.hp.eval_batch_size, setup.ctx.device, pad, left)
                state.update(head=head)
                probed.append({"seed": seed, **meta})
            probe.load_head(model, setup.num_labels, state["head"])
        return model
    return fresh


def sequential(setup: Setup, arm: str, seed: int) -> ArmRun:
    """One run of the profile's recipe."""
    body, inter = start(setup, arm, seed)
    probed, stream = [], arm_seed(setup.ctx, arm, seed)
    model = fresh_factory(setup, stream, body, probed)()
    pad, left = setup.pad
    info = train(model, setup.train_enc, setup.hp, stream, setup.ctx.device, pad, left,
                 desc=f"{setup.cell.id} {arm} s{seed}", compile=setup.ctx.compile)
    return ArmRun(model, info, setup.hp.epochs, intermediate=inter, probe=probed[0] if probed else None)


def tuned(setup: Setup, arm: str, seed: int, space: SearchSpace) -> ArmRun:
    """The arm's model selected on the validation split: a run per learning rate of `space`, scored on validation
    after each epoch and stopped early (each run's schedule is planned for `max_epochs`); the selected epoch's weights,
    the search result (harness.running.tuning.Search.result) and the runs' summed training info."""
    body, inter = start(setup, arm, seed)
    probed, stream = [], arm_seed(setup.ctx, arm, seed)
    fresh = fresh_factory(setup, stream, body, probed)
    ctx, hp, val_enc = setup.ctx, setup.hp, setup.val_enc
    pad, left = setup.pad
    metric = FUNCTIONS[setup.metric]
    search = tuning.Search(space, lambda predictions: metric(val_enc.targets, predictions),
                           tuning.validation_se(metric, np.asarray(val_enc.targets)))
    total = {"seconds": 0.0, "callback_seconds": 0.0, "examples": 0}
    for lr in space.lr:
        model = fresh()

        def validate(epoch, model=model, lr=lr):
            return search.observe(lr, epoch, predict(model, val_enc, hp.eval_batch_size, ctx.device, pad, left),
                                  model)

        cfg = dataclasses.replace(hp, lr=lr, epochs=space.max_epochs)
        info = train(model, setup.train_enc, cfg, stream, ctx.device, pad, left,
                     desc=f"{setup.cell.id} {arm} s{seed} lr={lr:g}", compile=ctx.compile, on_epoch=validate)
        for k in total:
            total[k] += info[k]
    model.load_state_dict(search.state)
    result = search.result(seed)
    return ArmRun(model, total, result["choice"]["epoch"], selected=result, intermediate=inter,
                  probe=probed[0] if probed else None)


def grouped(setup: Setup) -> dict[tuple[str, int], ArmRun]:
    """Both arms of every seed of an untuned cell trained together, members in the order (seed, arm) of the
    sequential loop. Each intermediate member starts from its seed's intermediate body, read from the cache or
    trained with the other seeds' intermediate models as one group (intermediate_body with `together`)."""
    ctx, hp, row = setup.ctx, setup.hp, setup.row
    pad, left = setup.pad
    together = functools.partial(train_together, family=row.family, cfg=ctx.profile.intermediate_train,
                                 device=ctx.device, pad_id=pad, left_pad=left)  # the intermediate group
    members, models, metas = [], [], []
    for seed in ctx.seeds:
        for arm in ARMS:
            model, meta = build_model(row, setup.tokenizer, setup.num_labels, hp.max_length,
                                      arm_seed(ctx, arm, seed)), None
            if arm == "intermediate" and not ctx.calibration:
                body, meta = intermediate_body(ctx, setup.cell, seed, together=together)
                model.base_model.load_state_dict(body)
            members.append((arm, seed))
            models.append(model)
            metas.append(meta)
    infos = train_together(models, row.family, setup.train_enc, hp, [arm_seed(ctx, *m) for m in members], ctx.device,
                           pad, left)
    return {member: ArmRun(model, info, hp.epochs, intermediate=meta)
            for member, model, info, meta in zip(members, models, infos, metas)}
