"""Pruning inside training: slim the model and its EMA with the same cut, rebuild optimizer and EMA, go on.

At the start of epoch `prune_at_epoch` the training model is scored and cut (channels with `Slimmer`, shortcut rules
on by default; or whole blocks with `LayerPruner`), its EMA copy gets exactly the same cut, and the optimizer is
rebuilt over the new tensors with every group's hyper-parameters (lr, initial_lr, momentum, weight decay) carried
over, so the LR schedule and warmup go on where they were. `best.pt` and early stopping start afresh at every cut:
the best model is one of the final widths. The groups are built by Ultralytics' own
`build_optimizer`, so a resumed run rebuilds the very same ones. Optimizer moments of the old tensors are dropped.
Under DDP every rank scores the cut on rank 0's BatchNorm statistics, so all ranks cut alike.

With `pruning_steps=K > 1` the channel cut is made gradually: at the start of each of K epochs spread from
`prune_at_epoch` to `pruning_end_epoch`, toward the widths planned on the uncut model (a cubic schedule, see
`Slimmer.schedule`), each step scored on the model as trained so far and recalibrated. The plan is made at the first
step and kept in the run's arguments (`pruning_plan`), so a resumed run goes on toward the same widths.
"""

from __future__ import annotations

import json

from torch import nn, optim
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from ..importance.data_aware import DATA_AWARE
from . import distill_hooks


def _pruner(trainer, model: nn.Module, calibrate: bool = True, widths: dict[str, int] | None = None):
    """The cut of `model`: the ratio's plan, or `widths` (one step of a gradual cut) by group root name."""
    cfg = trainer.compression.pruning
    imgsz = trainer.train_size()
    if cfg.pruning_method == "layer":
        from ..slim.depth import LayerPruner

        return LayerPruner(model, ratio=cfg.pruning_ratio, importance=cfg.importance_metric, imgsz=imgsz)
    from ..slim.slimmer import Slimmer

    recal = trainer.compression.calibration.recalibrate_bn
    data = None  # planning needs no data: the widths do not depend on the scorer
    if calibrate and (recal or cfg.importance_metric in DATA_AWARE):
        data = trainer.calibration()  # None for classification
    importance = cfg.importance_metric if data is not None or cfg.importance_metric not in DATA_AWARE else "l1"
    slimmer = Slimmer(model, ratio=cfg.pruning_ratio, importance=importance, rules=cfg.rules, round_to=cfg.round_to,
                      imgsz=imgsz, data=data, recalibrate=recal)
    slimmer.widths = widths
    return slimmer


def step_widths(trainer, model: nn.Module, step: int) -> dict[str, int] | None:
    """Widths after step `step` (0-based) of a gradual cut, planned on `model` at the first step; None for one cut."""
    cfg = trainer.compression.pruning
    if cfg.pruning_steps <= 1:
        return None
    if step == 0:
        cfg.pruning_plan = json.dumps(_pruner(trainer, model, calibrate=False).schedule(cfg.pruning_steps))
        trainer.args.pruning_plan = cfg.pruning_plan  # saved in train_args with every checkpoint: resume reads it
    elif not cfg.pruning_plan:
        raise RuntimeError(f"step {step + 1} of a gradual cut found no plan in the run's arguments")
    return json.loads(cfg.pruning_plan)[step]


def validate_prunable(trainer) -> None:
    """Before training: fail now (not at `prune_at_epoch`) if the model cannot be pruned; log the planned cut."""
    cfg = trainer.compression.pruning
    final = json.loads(cfg.pruning_plan)[-1] if cfg.pruning_steps > 1 and cfg.pruning_plan else None  # resumed
    report = _pruner(trainer, unwrap_model(trainer.model), calibrate=False, widths=final).plan()
    b, a = report.to_dict()["before"], report.to_dict()["after"]
    if RANK in {-1, 0}:
        when = (f"at the start of epoch {cfg.prune_at_epoch + 1}" if cfg.pruning_steps <= 1 else
                f"in {cfg.pruning_steps} steps (at the start of epochs {', '.join(str(e + 1) for e in cfg.step_epochs())})")
        LOGGER.info(f"yoloprune: {cfg.pruning_method} pruning {when} will take params {b['params']:,} -> "
                    f"{a['params']:,}, GFLOPs {b['gflops']:.2f} -> {a['gflops']:.2f}")


def prune_in_training(trainer, step: int = 0) -> None:
    """Slim `trainer.model` and `trainer.ema` in place of the old ones (step `step` of a gradual cut); rebuild
    optimizer, scheduler and EMA."""
    old = unwrap_model(trainer.model)
    _sync_buffers(trainer, old)
    distill_hooks.detach(old)  # cut the student with its stock criterion; the distiller is re-attached below
    pruner = _pruner(trainer, old, widths=step_widths(trainer, old, step))
    slim = pruner.slim().to(trainer.device)  # recalibrated on the calibration sample when there is one
    slim.train(old.training)
    for name, p in slim.named_parameters():  # frozen layers stay frozen
        p.requires_grad_(p.dtype.is_floating_point and not any(f in name for f in trainer.freeze_layer_names))
    ema_slim = pruner.cut_like(trainer.ema.ema).to(trainer.device) if trainer.ema else None  # recalibrated alike
    _sync_buffers(trainer, slim)  # every rank keeps rank 0's recalibrated statistics
    if ema_slim is not None:
        _sync_buffers(trainer, ema_slim)

    old_groups = trainer.optimizer.param_groups
    trainer.optimizer = rebuild_optimizer(trainer, slim)
    kd = getattr(trainer, "distiller", None)
    if kd is not None:  # new widths: new adapters, in their own optimizer group (before the scheduler sees groups)
        kd.rebuild_adapters(slim)
        distill_hooks.broadcast_adapters(trainer)
        distill_hooks.add_adapter_group(trainer.optimizer, kd, like=_group(old_groups))
    trainer.scheduler = optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambda=trainer.lf)
    trainer.scheduler.last_epoch = trainer.epoch - 1  # the loop steps it to this epoch right after
    trainer.model = _wrap_like(trainer, slim)
    if ema_slim is not None:
        updates = trainer.ema.updates
        trainer.ema = ModelEMA(slim, updates=updates)  # the decay ramp goes on where it was
        trainer.ema.ema.load_state_dict(ema_slim.state_dict())
    if kd is not None:
        distill_hooks.install(trainer)  # after the EMA copy: the EMA keeps the stock criterion
    trainer.pruning_report = pruner.report
    # best.pt and early stopping judge the new widths only: an earlier, wider model must not win best.pt
    trainer.best_fitness = None
    if getattr(trainer, "stopper", None) is not None:
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch
    if RANK in {-1, 0}:
        steps = trainer.compression.pruning.pruning_steps
        what = f"step {step + 1} of {steps} of the cut" if steps > 1 else "pruned"
        LOGGER.info(f"yoloprune: {what} at the start of epoch {trainer.epoch + 1}\n{pruner.report.format()}")


def rebuild_optimizer(trainer, model: nn.Module) -> optim.Optimizer:
    """A new optimizer over `model` built exactly as Ultralytics builds one (so `resume` rebuilds the same groups),
    with every group's live settings (lr, initial_lr, momentum, betas, weight decay) copied from the old one."""
    from ultralytics.engine.trainer import BaseTrainer

    old = trainer.optimizer
    new = BaseTrainer.build_optimizer(trainer, model, name=type(old).__name__, lr=trainer.args.lr0,
                                      momentum=trainer.args.momentum, decay=0.0)
    mine = [g for g in old.param_groups if g.get("param_group") != distill_hooks.GROUP]
    if len(mine) != len(new.param_groups):
        raise RuntimeError(f"optimizer groups changed in pruning ({len(mine)} -> {len(new.param_groups)})")
    for g_new, g_old in zip(new.param_groups, mine):
        g_new.update({k: v for k, v in g_old.items() if k != "params"})
    return new


def _group(groups: list[dict]) -> dict | None:
    """The distillation adapters' old group (its live lr and settings), if any."""
    return next((g for g in groups if g.get("param_group") == distill_hooks.GROUP), None)


def _sync_buffers(trainer, model: nn.Module) -> None:
    """Under DDP, BatchNorm statistics are not synchronised: give every rank rank 0's before scoring the cut."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)


def _wrap_like(trainer, model: nn.Module) -> nn.Module:
    """Wrap the slim model for DDP as Ultralytics' trainer wraps the original."""
    if trainer.world_size <= 1 or RANK == -1:
        return model
    from ultralytics.utils.torch_utils import TORCH_1_11, TORCH_2_13

    kwargs = {"static_graph": bool(trainer.args.compile)} if TORCH_1_11 else {}
    kwargs["forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers"] = False
    ids = None if trainer.device.type == "cpu" else [trainer.device.index]  # DDP takes no device ids for a CPU module
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=not bool(trainer.args.compile), **kwargs)
