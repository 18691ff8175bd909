"""Pruning inside training: slim the model and its EMA with the same cut, rebuild optimizer and EMA, go on.

At the start of epoch `prune_at_epoch` the training model is scored and cut (channels with `Slimmer`, shortcut rules
on by default; or whole blocks with `LayerPruner`), its EMA copy gets exactly the same cut, and the optimizer is
rebuilt over the new tensors with every group's hyper-parameters (lr, initial_lr, momentum, weight decay) carried
over, so the LR schedule and warmup go on where they were. Optimizer moments of the old tensors are dropped.
"""

from __future__ import annotations

import inspect

from torch import nn, optim
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model


def _pruner(trainer, model: nn.Module):
    cfg = trainer.compression.pruning
    imgsz = int(trainer.args.imgsz if isinstance(trainer.args.imgsz, int) else max(trainer.args.imgsz))
    if cfg.pruning_method == "layer":
        from ..depth import LayerPruner

        return LayerPruner(model, ratio=cfg.pruning_ratio, importance=cfg.importance_metric, imgsz=imgsz)
    from ..slimmer import Slimmer

    return Slimmer(model, ratio=cfg.pruning_ratio, importance=cfg.importance_metric, rules=cfg.rules,
                   round_to=cfg.round_to, imgsz=imgsz)


def validate_prunable(trainer) -> None:
    """Before training: fail now (not at `prune_at_epoch`) if the model cannot be pruned; log the planned cut."""
    report = _pruner(trainer, unwrap_model(trainer.model)).plan()
    b, a = report.to_dict()["before"], report.to_dict()["after"]
    if RANK in {-1, 0}:
        cfg = trainer.compression.pruning
        LOGGER.info(f"yoloprune: {cfg.pruning_method} pruning at the start of epoch {cfg.prune_at_epoch + 1} will "
                    f"take params {b['params']:,} -> {a['params']:,}, GFLOPs {b['gflops']:.2f} -> {a['gflops']:.2f}")


def prune_in_training(trainer) -> None:
    """Slim `trainer.model` and `trainer.ema` in place of the old ones; rebuild optimizer, scheduler and EMA."""
    from . import distill_hooks

    old = unwrap_model(trainer.model)
    distill_hooks.detach(old)  # cut the student with its stock criterion; the distiller is re-attached below
    pruner = _pruner(trainer, old)
    slim = pruner.slim().to(trainer.device)
    slim.train(old.training)
    for name, p in slim.named_parameters():  # frozen layers stay frozen
        p.requires_grad_(p.dtype.is_floating_point and not any(f in name for f in trainer.freeze_layer_names))
    ema_slim = pruner.cut_like(trainer.ema.ema).to(trainer.device) if trainer.ema else None

    trainer.optimizer = rebuild_optimizer(trainer.optimizer, old, slim)
    trainer.scheduler = optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambda=trainer.lf)
    trainer.scheduler.last_epoch = trainer.epoch - 1  # the loop steps it to this epoch right after
    trainer.model = _wrap_like(trainer, slim)
    if ema_slim is not None:
        updates = trainer.ema.updates
        trainer.ema = ModelEMA(slim, updates=updates)  # the decay ramp goes on where it was
        trainer.ema.ema.load_state_dict(ema_slim.state_dict())
    if getattr(trainer, "distiller", None) is not None:  # new widths: new adapters, in the same optimizer group
        trainer.distiller.rebuild_adapters(slim)
        distill_hooks.add_adapter_group(trainer.optimizer, trainer.distiller)
        distill_hooks.install(trainer)
    trainer.pruning_report = pruner.report
    if RANK in {-1, 0}:
        LOGGER.info(f"yoloprune: pruned at the start of epoch {trainer.epoch + 1}\n{pruner.report.format()}")


def rebuild_optimizer(old: optim.Optimizer, old_model: nn.Module, new_model: nn.Module) -> optim.Optimizer:
    """A new optimizer of the same type over `new_model`'s tensors, with each group's settings copied from `old`."""
    names = {id(p): n for n, p in old_model.named_parameters()}
    params = dict(new_model.named_parameters())
    groups = []
    for g in old.param_groups:
        members = [params[names[id(p)]] for p in g["params"] if names.get(id(p)) in params]
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": members})
    accepted = inspect.signature(type(old).__init__).parameters
    kwargs = {k: v for k, v in old.defaults.items() if k in accepted and k != "params"}
    if "fused" in kwargs and not all(p.is_cuda for p in params.values()):
        kwargs["fused"] = None
    return type(old)(groups, **kwargs)


def _wrap_like(trainer, model: nn.Module) -> nn.Module:
    """Wrap the slim model for DDP as Ultralytics' trainer wraps the original."""
    if trainer.world_size <= 1 or RANK == -1:
        return model
    from ultralytics.utils.torch_utils import TORCH_1_11, TORCH_2_13

    kwargs = {"static_graph": bool(trainer.args.compile)} if TORCH_1_11 else {}
    kwargs["forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, device_ids=[trainer.device.index],
                                               find_unused_parameters=not bool(trainer.args.compile), **kwargs)
