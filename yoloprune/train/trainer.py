"""Trainers for every task that keep a slim model slim, add the sparsity penalty and prune inside training.

`trainer_for(task)` returns a subclass of Ultralytics' own trainer for that task, made once by one factory and
importable by name (Ultralytics' DDP launch pickles the trainer class and rebuilds it in each worker process). Use it
through Ultralytics' extension point:

    YOLO("slim.pt").train(trainer=trainer_for("detect"), data="data.yaml", epochs=10, pruning=True, prune_at_epoch=2)

What it changes, and nothing else:
- a model whose layers differ from its YAML (a slim checkpoint) is trained as it is; the stock trainer would rebuild it
  from the YAML and copy only the tensors whose shapes still match. Resume keeps it too.
- yoloprune's keys (see `yoloprune.train.config`) are accepted next to Ultralytics' and stored in `train_args`, so
  `resume` and DDP workers get them back; validators and saved models see only Ultralytics' keys.
- sparsity training adds the penalty's gradient once per optimizer step and logs sparsity columns in `results.csv`.
- `pruning=True` slims the model and its EMA at the start of epoch `prune_at_epoch` (see `inprune.py`).
- `distillation=True` adds a frozen teacher's distillation loss to the training model's criterion (see
  `distill_hooks.py`); the EMA, validation and checkpoints never see the teacher or the adapters.
- `precise_bn=True` (default) re-estimates the EMA's BatchNorm statistics on a calibration sample of the training
  images at every epoch's end, before validation and saving, kept where they measure better (see `precise_bn.py`).
"""

from __future__ import annotations

from copy import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn
from ultralytics.models import yolo
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK

from ..errors import UserError
from . import distill_hooks as kd
from . import precise_bn
from .config import KEYS, CompressionConfig
from .inprune import prune_in_training, validate_prunable
from .regularize import build_regularizer, get_sparsity

BASES = {
    "detect": yolo.detect.DetectionTrainer,
    "segment": yolo.segment.SegmentationTrainer,
    "pose": yolo.pose.PoseTrainer,
    "obb": yolo.obb.OBBTrainer,
    "classify": yolo.classify.ClassificationTrainer,
}
PREFIX = "yoloprune:"


def _check_data(overrides: dict) -> None:
    """A `data` that does not exist is a one-line error here, before Ultralytics would try to download it."""
    data = overrides.get("data")
    if data is None or overrides.get("resume"):
        return
    if isinstance(data, dict):
        return
    p = Path(str(data))
    if p.exists():
        return
    from ultralytics.utils import ROOT

    from ..offline import is_offline

    shipped = (ROOT / "cfg" / "datasets" / p.name).is_file() and p.parent == Path(".")
    remote = "://" in str(data) or (p.parent == Path(".") and not p.suffix)  # a URL or a dataset name
    if (shipped or remote) and not is_offline():
        return  # Ultralytics downloads it
    hint = " (Ultralytics would download it, but this run is offline)" if shipped else ""
    raise UserError(f"data '{data}' not found{hint}: pass the path of a dataset YAML (a folder for classify); "
                    "`yoloprune dataset DIR` writes a synthetic one")


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def _model_classes(model: nn.Module) -> int | None:
    names = getattr(model, "names", None)
    return len(names) if names else getattr(model, "nc", None)


class CompressionTrainer:
    """Mixin over an Ultralytics task trainer; see the module docstring. `trainer_for(task)` builds the classes."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        overrides = dict(overrides or {})
        self.compression = CompressionConfig.pop_from(overrides)
        if not overrides.get("resume"):
            from ultralytics.cfg import get_cfg

            epochs = overrides.get("epochs", get_cfg(cfg).epochs)
            self.compression.validate(epochs)
            if self.compression.pruning.pruning and overrides.get("compile"):
                raise UserError("compile cannot be combined with pruning (the compiled graph would keep the old "
                                "shapes); drop compile=True")
            _check_data(overrides)
        super().__init__(cfg, overrides, _callbacks)
        if self.resume:
            self._restore_compression(overrides)
        for k, v in self.compression.to_dict().items():
            setattr(self.args, k, v)  # kept in train_args: resume and DDP workers read them back
        self.regularizer = build_regularizer(self.compression.sparsity)
        self._batches_since_step = 0
        self._last_sparsity: dict | None = None
        self.distiller = None
        self._pruned_epoch: int | None = None
        self._calibration = None
        if self.compression.distill.distillation:
            self._teacher = kd.check_teacher(self)  # one-line errors now, before any training
            self._add_once("on_train_start", kd.install)
        self._add_once("on_train_batch_start", _count_batch)
        self._add_once("on_pretrain_routine_end", _announce)
        self._add_once("on_train_epoch_start", _maybe_prune)
        self._add_once("on_train_epoch_end", precise_bn.refresh)
        if changed := self.compression.changed():
            LOGGER.info(f"{PREFIX} " + ", ".join(f"{k}={v}" for k, v in changed.items()))

    def _add_once(self, event: str, callback) -> None:
        """DDP workers are rebuilt with the parent's callbacks, ours included: never register one twice."""
        if callback not in self.callbacks.get(event, []):
            self.add_callback(event, callback)

    def _restore_compression(self, overrides: dict) -> None:
        """On resume, yoloprune's keys come back from the checkpoint's `train_args`, like Ultralytics' own."""
        from ultralytics.utils.patches import torch_load

        ckpt = torch_load(self.args.resume, map_location="cpu")
        saved = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k in KEYS}
        asked = CompressionConfig.pop_from({k: v for k, v in overrides.items() if k in KEYS}).changed()
        self.compression = CompressionConfig.pop_from(dict(saved))
        if ignored := [k for k, v in asked.items() if saved.get(k) != v]:
            LOGGER.warning(f"{PREFIX} resume ignores {ignored}, using the checkpoint's values")

    def train_size(self) -> int:
        """The training size as one number (the larger side of a rectangular `imgsz`)."""
        return int(self.args.imgsz if isinstance(self.args.imgsz, int) else max(self.args.imgsz))

    def calibration(self):
        """The run's calibration sample (read once): a fixed sample of the training split at the training size,
        without augmentation, shared by the in-training cut and precise BatchNorm; None for classification."""
        if self.args.task == "classify":
            return None
        if self._calibration is None:
            from ..calibrate import load_calibration

            images = self.compression.calibration.calib_images
            self._calibration = load_calibration(self.data, self.train_size(), images, self.args.task, seed=0)
        return self._calibration

    # --- model ---------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose=True):
        """Keep a model whose architecture differs from its YAML (slim); otherwise Ultralytics' usual build."""
        if not isinstance(weights, nn.Module):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        stock = _rebuild(weights)  # its own YAML with its own classes: only pruning makes it differ
        if stock is None or _same_architecture(stock, weights):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        nc, data_nc = _model_classes(weights), self.data["nc"]
        if nc is not None and nc != data_nc:
            raise UserError(f"the slim model predicts {nc} classes but data '{self.args.data}' has {data_nc}: slim a "
                            "model trained on this data, or fine-tune the base model on it first")
        kpt, data_kpt = getattr(weights, "kpt_shape", None), self.data.get("kpt_shape")
        if kpt is not None and data_kpt is not None and list(kpt) != list(data_kpt):
            raise UserError(f"the slim model predicts keypoints of shape {list(kpt)} but data '{self.args.data}' has "
                            f"{list(data_kpt)}: slim a model trained on this data")
        model = weights.float()
        for p in model.parameters():
            p.requires_grad_(p.dtype.is_floating_point)
        for m in model.modules():
            if isinstance(m, nn.Dropout) and getattr(self.args, "dropout", 0):
                m.p = self.args.dropout
        if RANK in {-1, 0}:
            params, base = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in stock.parameters())
            LOGGER.info(f"{PREFIX} training the slim model as it is: {params:,} params ({base:,} in its YAML)")
        return model

    def build_optimizer(self, model, *args, **kwargs):
        """Ultralytics' optimizer, plus a group for the distillation adapters (built here: the model is ready)."""
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.compression.distill.distillation:
            kd.build(self, _unwrap(model), optimizer)
        return optimizer

    # --- validation sees only Ultralytics' keys ---------------------------------------------------------------------
    def get_validator(self):
        full = self.args
        self.args = copy(full)
        for k in KEYS:
            self.args.__dict__.pop(k, None)
        try:
            return super().get_validator()
        finally:
            self.args = full

    # --- sparsity training -----------------------------------------------------------------------------------------
    def optimizer_step(self):
        """Add the sparsity penalty's gradient once per step, in the units the scaled, accumulated loss has."""
        if self.regularizer is not None:
            if self.args.task == "classify":  # a batch mean per rank, summed over ranks
                images = self._batches_since_step * max(self.world_size, 1)
            else:  # a sum over the batch's images (all ranks)
                images = self._batches_since_step * self.batch_size
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            self.regularizer.add_grad_(_unwrap(self.model), scale * images)
        self._batches_since_step = 0
        if self.distiller is not None:
            kd.sync_adapter_grads(self)
        super().optimizer_step()

    def _handle_nan_recovery(self, epoch):
        """Ultralytics reloads `last.pt` on a NaN; in the epoch that pruned, that file still holds the unpruned model."""
        if self._pruned_epoch == epoch:
            loss_nan = self.loss is not None and not self.loss.isfinite()
            if loss_nan or (self.fitness is not None and not np.isfinite(self.fitness)):
                LOGGER.warning(f"{PREFIX} NaN in the epoch that pruned: last.pt predates the cut, so no recovery")
            return False
        return super()._handle_nan_recovery(epoch)

    def save_model(self):
        """Ultralytics' checkpoints, then the distillation adapters beside them (for resume; not in the checkpoint)."""
        saved = super().save_model()
        if self.distiller is not None:
            kd.save_adapters(self)
        return saved

    def save_metrics(self, metrics):
        if self.compression.sparsity.enabled or self.compression.pruning.pruning:
            metrics = {**metrics, **self._sparsity_columns()}
        super().save_metrics(metrics)

    def _sparsity_columns(self) -> dict:
        model = self.ema.ema if self.ema else _unwrap(self.model)
        s = get_sparsity(model, self.compression.sparsity.sparsity_threshold)
        cols = {
            "sparsity/weights": round(s["overall_sparsity"], 6),
            "sparsity/channels": round(s["channel_sparsity"], 6),
            "sparsity/bn_gamma": round(s["bn_sparsity"], 6),
            "sparsity/bn_gamma_mean": round(s["bn_gamma"].get("mean", 0.0), 6),
            "sparsity/bn_gamma_hoyer": s["bn_gamma"].get("hoyer", 0.0),
            "model/params": sum(p.numel() for p in model.parameters()),
        }
        if self.regularizer is not None:
            with torch.no_grad():
                cols["sparsity/penalty"] = float(self.regularizer(model))
        prev, self._last_sparsity = self._last_sparsity, cols
        trend = ""
        if prev:
            d = {k: cols[k] - prev[k] for k in cols if k in prev}
            trend = (f" | since last epoch: weights {d['sparsity/weights']:+.2%}, mean |gamma| "
                     f"{d['sparsity/bn_gamma_mean']:+.4f}, gamma Hoyer {d['sparsity/bn_gamma_hoyer']:+.4f}")
        LOGGER.info(f"{PREFIX} epoch {self.epoch + 1} sparsity (below {self.compression.sparsity.sparsity_threshold:g}): "
                    f"weights {cols['sparsity/weights']:.2%}, channels {cols['sparsity/channels']:.2%}, BN gamma "
                    f"{cols['sparsity/bn_gamma']:.2%}; mean |gamma| {cols['sparsity/bn_gamma_mean']:.4f}, gamma Hoyer "
                    f"{cols['sparsity/bn_gamma_hoyer']:.4f}{trend}")
        return cols


def _rebuild(weights: nn.Module) -> nn.Module | None:
    """A fresh model from `weights`' own YAML (its classes, keypoints and channels), or None if that fails."""
    from copy import deepcopy

    try:
        return type(weights)(deepcopy(weights.yaml), ch=weights.yaml.get("channels", 3), verbose=False)
    except Exception:  # an unusual model class: fall back to Ultralytics' own handling
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(model)


def _count_batch(trainer) -> None:
    trainer._batches_since_step += 1


def _reset_count(trainer) -> None:
    trainer._batches_since_step = 0  # an epoch (re)starts: gradients of an aborted pass were dropped


def _announce(trainer) -> None:
    """Before the first epoch: check the model can be pruned and say what will happen."""
    cfg = trainer.compression.pruning
    if cfg.pruning and trainer.start_epoch <= cfg.step_epochs()[-1]:
        validate_prunable(trainer)


def _maybe_prune(trainer) -> None:
    _reset_count(trainer)
    cfg = trainer.compression.pruning
    epochs = cfg.step_epochs()
    if cfg.pruning and trainer.epoch in epochs and trainer._pruned_epoch != trainer.epoch:
        prune_in_training(trainer, epochs.index(trainer.epoch))  # once: an OOM retry or NaN recovery restarts it
        trainer._pruned_epoch = trainer.epoch


def _make(task: str) -> type:
    base = BASES[task]
    name = f"{task.capitalize()}CompressionTrainer" if task != "obb" else "OBBCompressionTrainer"
    cls = type(name, (CompressionTrainer, base), {"__module__": __name__, "__doc__": f"{base.__name__} + yoloprune."})
    cls.__qualname__ = name
    return cls


TRAINERS = {task: _make(task) for task in BASES}
globals().update({cls.__name__: cls for cls in TRAINERS.values()})  # importable by name, for DDP workers


def trainer_for(task_or_model) -> type:
    """The yoloprune trainer class for a task name, a `YOLO` object or a model (its `task`)."""
    task = task_or_model if isinstance(task_or_model, str) else getattr(task_or_model, "task", None)
    if task not in TRAINERS:
        from ..errors import close_match

        raise UserError(f"task '{task}' has no yoloprune trainer{close_match(str(task), TRAINERS)}; "
                        f"supported: {', '.join(TRAINERS)}")
    return TRAINERS[task]
