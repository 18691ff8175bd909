"""`train(model, **keys)`: Ultralytics training with yoloprune's trainer, after every input is checked."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .config import KEYS, CompressionConfig


def train(model=None, **kwargs):
    """Train a YOLO model with Ultralytics' keys plus yoloprune's (sparsity, pruning); return Ultralytics' metrics.

    Args:
        model: a `.pt` checkpoint (slim ones stay slim), a model YAML name/path or a `YOLO`; with `resume=path`
            it defaults to that checkpoint.
        **kwargs: any Ultralytics train key (`data`, `epochs`, `imgsz`, ...) and yoloprune's keys
            (`l1_regularization`, `lambda_l1`, `structured_l1`, `lambda_bn`, `pruning`, `pruning_ratio`,
            `pruning_method`, `importance_metric`, `prune_at_epoch`, ...).

    Example:
        >>> train("yolo26n.yaml", data="shapes/data.yaml", epochs=30, structured_l1=True, lambda_bn=1e-4)
        >>> train("runs/detect/train/weights/best.pt", data="shapes/data.yaml", epochs=20, pruning=True,
        ...       pruning_ratio=0.3, prune_at_epoch=2, importance_metric="bn")
    """
    from ultralytics import YOLO
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from ..checkpoint import load_model
    from .trainer import trainer_for

    kwargs = dict(kwargs)
    kwargs.pop("mode", None)  # a cfg file may say `mode: train`
    resume = kwargs.get("resume")
    if model is None:
        model = kwargs.pop("model", None)
    else:
        kwargs.pop("model", None)
    if isinstance(resume, (str, Path)) and resume:
        model, kwargs["resume"] = str(resume), True  # the checkpoint to resume is the model
    if model is None:
        raise UserError("no model: pass model=path.pt or a model YAML such as model=yolo26n.yaml")
    if not resume and not kwargs.get("data"):
        raise UserError("no data: pass data=path/to/data.yaml (`yoloprune dataset DIR` writes a synthetic one)")
    ours = CompressionConfig.pop_from({k: v for k, v in kwargs.items() if k in KEYS})
    if not resume:
        ours.validate(kwargs.get("epochs", DEFAULT_CFG_DICT["epochs"]))
    if isinstance(model, YOLO):
        yolo = model
    else:
        load_model(model)  # one-line errors for missing, corrupt or non-YOLO files (YOLO() would raise tracebacks)
        yolo = YOLO(str(model))
    try:
        return yolo.train(trainer=trainer_for(yolo.task), **kwargs)
    except RuntimeError as e:
        if str(e).startswith("Dataset '"):  # Ultralytics' own check of the data YAML's contents
            raise UserError(" ".join(str(e).split(" Note dataset download")[0].split())) from None
        raise
    except AssertionError as e:
        if "nothing to resume" in str(e):
            raise UserError(f"{str(e).splitlines()[0]}: start a new run instead of resume") from None
        raise
