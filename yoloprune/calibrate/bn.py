"""BatchNorm recalibration after a cut, judged on held-back calibration images, and the calibration loss.

A cut changes what every BatchNorm layer downstream sees, but its running statistics still describe the uncut
model. Recalibration resets them and re-estimates them (cumulative average, no gradients, no augmentation) on the
calibration sample, in training mode. It usually recovers much of a deep cut's accuracy at once, but not always (a
mild cut of a well-chosen set of channels may be better served by the old statistics), so the result is judged: the
detection loss on held-back calibration batches, with the old and with the new statistics, and the better is kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .data import on_device

_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class Recalibration:
    """What recalibrating one cut model did: held-back loss before and after, and which statistics were kept."""

    loss_before: float  # detection loss on the held-back batches with the carried-over statistics
    loss_after: float  # ... with re-estimated statistics
    kept: bool  # the re-estimated statistics were kept (they gave the lower loss)
    batches: int  # batches the statistics were estimated on

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return (f"BatchNorm recalibration on {self.batches} batches: held-back loss {self.loss_before:.4f} -> "
                f"{self.loss_after:.4f}, {'kept' if self.kept else 'not kept (the old statistics do better)'}")


@contextmanager
def loss_ready(model: nn.Module):
    """Let `model.loss(batch)` run outside a trainer: Ultralytics' criterion reads its hyper-parameters from
    `model.args` as a namespace (a checkpoint stores a dict, filled here over Ultralytics' defaults). A criterion is
    built for the duration; the model's own `args` and `criterion` (a trainer's, with its schedule) come back on exit."""
    from ultralytics.cfg import get_cfg

    old_args, had_args = getattr(model, "args", None), hasattr(model, "args")
    old_criterion = getattr(model, "criterion", None)
    if not hasattr(old_args, "box"):  # a dict from a checkpoint, or nothing: Ultralytics' defaults under it
        cfg = get_cfg()
        for k, v in (old_args.items() if isinstance(old_args, dict) else ()):
            if hasattr(cfg, k):
                setattr(cfg, k, v)
        model.args = cfg
    model.criterion = None
    try:
        yield model
    finally:
        model.criterion = old_criterion
        if had_args:
            model.args = old_args
        else:
            del model.args


@contextmanager
def frozen_statistics(model: nn.Module):
    """Training-mode outputs (what the loss reads) with BatchNorm using its running statistics."""
    was = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, _BN):
            m.eval()
    try:
        yield model
    finally:
        model.train(was)


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: list[dict]) -> float:
    """Mean detection loss (Ultralytics' own criterion) over `batches`, BatchNorm on its running statistics."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with loss_ready(model), frozen_statistics(model):
        for b in batches:
            loss, _ = model.loss(on_device(b, device))
            total += float(loss.sum())
            n += len(b["img"])
    return total / max(n, 1)


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: list[dict]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them over `batches` (cumulative average, training
    mode, no gradients). Returns the number of BatchNorm layers recalibrated."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was = model.training
    device = next(model.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts alike
    model.train()
    try:
        for b in batches:
            model(on_device(b, device)["img"])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was)
    return len(bns)


def recalibrate(model: nn.Module, calib, judge: bool = True) -> Recalibration:
    """Recalibrate `model`'s BatchNorm statistics in place on `calib.fit`, keep them only if the loss on `calib.held`
    is lower than with the old ones (`judge=False`: always keep). Returns what it did."""
    before = calibration_loss(model, calib.held) if judge else float("nan")
    old = {k: v.clone() for k, v in model.state_dict().items() if _is_bn_buffer(model, k)}
    reestimate_bn(model, calib.fit)
    after = calibration_loss(model, calib.held) if judge else float("nan")
    kept = not judge or after <= before
    if not kept:
        model.load_state_dict(old, strict=False)
    return Recalibration(before, after, kept, len(calib.fit))


def _is_bn_buffer(model: nn.Module, key: str) -> bool:
    owner, _, name = key.rpartition(".")
    return name in ("running_mean", "running_var", "num_batches_tracked") and isinstance(
        model.get_submodule(owner) if owner else model, _BN)
