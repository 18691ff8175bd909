"""Reading YOLO models from checkpoints or YAML names, and writing slim models as stock Ultralytics checkpoints."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .errors import UserError


@dataclass
class LoadedModel:
    """A YOLO model with where it came from and the checkpoint metadata worth carrying over."""

    model: nn.Module
    source: str
    from_yaml: bool
    ckpt: dict = field(default_factory=dict)


def _yaml_path(name: str) -> Path | None:
    """Resolve a model YAML like Ultralytics does (`yolo26n.yaml` -> `cfg/models/26/yolo26.yaml`), offline."""
    import re

    from ultralytics.utils import ROOT

    p = Path(name)
    if p.is_file():
        return p
    if p.parent != Path("."):
        return None
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", p.stem) + p.suffix
    for candidate in (p.name, unified):
        hits = sorted((ROOT / "cfg" / "models").rglob(candidate))
        if hits:
            return hits[0]
    return None


def load_model(src) -> LoadedModel:
    """Load a YOLO model from a `.pt` checkpoint path, an Ultralytics model YAML name/path, a `YOLO` or a model.

    Raises:
        UserError: missing file, a file that is not a checkpoint, a checkpoint without a YOLO model, an unknown YAML.
    """
    from ultralytics.nn.tasks import BaseModel

    if isinstance(src, nn.Module) and not isinstance(src, BaseModel) and isinstance(getattr(src, "model", None), BaseModel):
        src = src.model  # an ultralytics `YOLO` wrapper
    if isinstance(src, BaseModel):
        return LoadedModel(src, source=str(getattr(src, "pt_path", "") or "model"), from_yaml=False)
    if isinstance(src, nn.Module):
        raise UserError(f"{type(src).__name__} is not an Ultralytics YOLO model: pass a YOLO checkpoint, YAML or model")
    src = str(src)
    if src.lower().endswith((".yaml", ".yml")):
        return _from_yaml(src)
    return _from_checkpoint(src)


def _from_yaml(src: str) -> LoadedModel:
    from ultralytics import YOLO

    path = _yaml_path(src)
    if path is None:
        raise UserError(f"model YAML '{src}' not found: pass an existing path or an Ultralytics name like yolo26n.yaml")
    try:
        yolo = YOLO(str(path) if Path(src).is_file() else src)
    except Exception as e:  # a YAML that Ultralytics cannot build
        raise UserError(f"cannot build a model from '{src}' ({type(e).__name__}: {e}); check the YAML") from None
    return LoadedModel(yolo.model, source=src, from_yaml=True)


def _from_checkpoint(src: str) -> LoadedModel:
    from ultralytics.nn.tasks import BaseModel, torch_safe_load

    path = Path(src)
    if not path.exists():
        raise UserError(f"model file '{src}' not found: pass an existing .pt checkpoint or a model YAML")
    if not path.is_file():
        raise UserError(f"'{src}' is not a file: pass a .pt checkpoint or a model YAML")
    if path.suffix != ".pt":
        raise UserError(f"'{src}' is not a .pt checkpoint or a .yaml model: pass one of those")
    try:
        ckpt, _ = torch_safe_load(str(path))
    except Exception as e:
        raise UserError(f"'{src}' is not a readable PyTorch checkpoint ({type(e).__name__}); pass a YOLO .pt file") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, BaseModel):
        raise UserError(f"'{src}' holds no Ultralytics YOLO model: pass a checkpoint saved by Ultralytics or yoloprune")
    model = model.float()
    model.pt_path = str(path)
    if not hasattr(model, "args") or not isinstance(model.args, dict):
        model.args = dict(ckpt.get("train_args") or {})
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "updates")}
    return LoadedModel(model, source=src, from_yaml=False, ckpt=meta)


def check_writable(path: Path) -> None:
    """Fail early, before any work, if `path` cannot be written."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"cannot write '{path}': folder '{parent}' does not exist; create it or pass another --output")
    if path.is_dir():
        raise UserError(f"cannot write '{path}': it is a folder; pass a file path ending in .pt")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write '{path}': permission denied; pass a writable --output path")
    try:  # a real probe: permissions, read-only mounts and pseudo file systems all show here
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write in '{parent}' ({e.strerror}); pass a writable --output path") from None


def save_checkpoint(model: nn.Module, path: str | Path, base: LoadedModel, extra: dict | None = None) -> Path:
    """Write `model` as an Ultralytics checkpoint, atomically (temp file + rename), keeping names, nc, task, args.

    The checkpoint holds only `torch`/`ultralytics` classes and plain data; `extra` is stored under `yoloprune`.
    """
    from ultralytics import __version__

    from ultralytics.nn.tasks import guess_model_task

    path = Path(path)
    check_writable(path)
    if not getattr(model, "task", None):
        model.task = guess_model_task(model)  # Ultralytics reads the task from the saved model
    args = model.args if isinstance(getattr(model, "args", None), dict) else {}
    ckpt = {
        **base.ckpt,
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": dict(base.ckpt.get("train_args") or args),
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "yoloprune": extra or {},
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result gets ordinary permissions
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write '{path}' ({e.strerror}); pass a writable path with free space") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
