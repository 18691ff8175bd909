"""The steps of the whole job, shared by `yoloprune demo` and the benchmarks: train, fine-tune, validate.

Every training step is cached by its settings: a finished run leaves `yoloprune-run.json` beside its `weights/`
folder, and asking for the same run again returns its checkpoint and metrics instead of training again (only while
its best.pt is the one it wrote). A run records its settings when it starts (`yoloprune-started.json`): an
interrupted run with the same settings resumes from its `last.pt` (Ultralytics' resume); one with other settings is
trained afresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

MARKER = "yoloprune-run.json"
STARTED = "yoloprune-started.json"


@dataclass
class Recipe:
    """Training settings that work for small models on small data sets (Ultralytics' keys).

    `nbs` equals the batch: Ultralytics' default 64 accumulates several batches per step, which makes short runs
    on few images learn very slowly. `finetune()` is the recipe of a short run from trained weights.
    """

    imgsz: int = 256
    batch: int = 16
    optimizer: str = "AdamW"
    lr0: float = 0.002
    warmup_epochs: float = 1.0
    warmup_bias_lr: float = 0.0
    seed: int = 0
    close_mosaic: int = 10  # Ultralytics' default: the last 10 epochs without mosaic augmentation

    def keys(self) -> dict:
        """Ultralytics' keys; `close_mosaic` only where it is not Ultralytics' default, so a run cached before the
        key existed keeps its identity (`run_settings`)."""
        return {"imgsz": self.imgsz, "batch": self.batch, "nbs": self.batch, "optimizer": self.optimizer,
                "lr0": self.lr0, "warmup_epochs": self.warmup_epochs, "warmup_bias_lr": self.warmup_bias_lr,
                "seed": self.seed, **({"close_mosaic": self.close_mosaic} if self.close_mosaic != 10 else {}),
                "deterministic": True, "workers": 0, "plots": False, "exist_ok": True}

    def finetune(self) -> "Recipe":
        """The recipe of a short run from trained weights (a slim model's fine-tune, or its reference): mosaic
        augmentation to the last epoch. With Ultralytics' `close_mosaic` 10, a fine-tune of 10 epochs or fewer sees
        none of the augmentation its base learned with, and a deep cut recovers less (README, `finetune.py`)."""
        return replace(self, close_mosaic=0)


@dataclass
class RunResult:
    """A finished training run: its best checkpoint and the final validation of it (Ultralytics' validator)."""

    weights: str
    map50: float
    map50_95: float
    epochs: int
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def box_maps(metrics) -> tuple[float, float]:
    """(mAP50, mAP50-95) of the boxes from Ultralytics' metrics (detect, segment, pose, obb)."""
    d = metrics.results_dict
    key = next((k for k in d if k.startswith("metrics/mAP50-95")), None)
    if key is None:
        from .errors import UserError

        raise UserError("the model's task reports no box mAP (classification?): the pipeline measures detection mAP")
    return float(d[key.replace("mAP50-95", "mAP50")]), float(d[key])


def train_run(model, data, project, name: str, epochs: int, recipe: Recipe, verbose: bool = True,
              **keys) -> RunResult:
    """Train `model` (a YAML or `.pt`; slim checkpoints stay slim) with yoloprune's trainer, or reuse a finished run.

    Args:
        model: a model YAML or checkpoint path.
        data: the `data=` of the run.
        project, name: the run lives in `project/name` (Ultralytics' layout).
        epochs: training epochs.
        recipe: the shared training settings.
        verbose: show Ultralytics' per-epoch output.
        **keys: further Ultralytics or yoloprune keys (`distillation=True`, `teacher_model=...`, ...).
    """
    import time

    from .train.run import train

    run = Path(project) / name
    settings = run_settings(model, data, epochs, recipe, **keys)
    done = _finished(run, settings)
    if done:
        return done
    t = time.perf_counter()
    metrics = _resumed(run, settings, verbose)
    if metrics is None:
        run.mkdir(parents=True, exist_ok=True)
        (run / STARTED).write_text(json.dumps(settings, indent=2))
        metrics = train(str(model), data=str(data), epochs=epochs, project=str(Path(project).resolve()), name=name,
                        verbose=verbose, **recipe.keys(), **keys)
    map50, map50_95 = box_maps(metrics)
    result = RunResult(str(run / "weights" / "best.pt"), round(map50, 4), round(map50_95, 4), epochs,
                       round(time.perf_counter() - t, 1))
    (run / MARKER).write_text(json.dumps({"settings": settings, "result": result.to_dict(),
                                          "weights_sha1": fingerprint(result.weights)}, indent=2))
    return result


def run_settings(model, data, epochs: int, recipe: Recipe, **keys) -> dict:
    """What identifies a run of `train_run`: a finished or interrupted run is reused only for the very same."""
    return json.loads(json.dumps({"model": str(model), "model_sha1": fingerprint(model), "data": str(data),
                                  "epochs": epochs, **recipe.keys(),
                                  **{k: str(v) if isinstance(v, Path) else v for k, v in keys.items()}}))


def _resumed(run: Path, settings: dict, verbose: bool):
    """Ultralytics' metrics of `run` resumed from its `last.pt`, when it was started with these very settings and
    stopped before its end; None when there is nothing to resume."""
    from .errors import UserError
    from .train.run import train

    last = run / "weights" / "last.pt"
    try:
        started = json.loads((run / STARTED).read_text())
    except (OSError, ValueError):
        return None
    if started != settings or not last.is_file():
        return None
    try:
        return train(resume=str(last), verbose=verbose)
    except UserError:  # finished (optimizer stripped) or unreadable: train afresh
        return None


def fingerprint(path) -> str | None:
    """SHA-1 of a model file (None for a YAML name): a cached run is reused only for the very same weights."""
    import hashlib

    p = Path(str(path))
    if p.suffix != ".pt" or not p.is_file():
        return None
    return hashlib.sha1(p.read_bytes()).hexdigest()


def _finished(run: Path, settings: dict) -> RunResult | None:
    marker = run / MARKER
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("settings") != settings or not Path(saved["result"]["weights"]).is_file():
        return None
    written = saved.get("weights_sha1")  # markers written before the fingerprint have none
    if written is not None and written != fingerprint(saved["result"]["weights"]):
        return None  # its checkpoint was overwritten since (by a run with other settings in the same folder)
    return RunResult(**{**saved["result"], "cached": True})


def validate(weights, data, imgsz: int, batch: int = 16, **kw) -> tuple[float, float]:
    """(mAP50, mAP50-95) of a checkpoint (or an exported model) on the data's validation split, by Ultralytics' own
    validator; `kw` are further validator arguments (`rect`, `nms`)."""
    from ultralytics import YOLO

    from .deploy.export import quiet_ultralytics

    with quiet_ultralytics():
        metrics = YOLO(str(weights)).val(data=str(data), imgsz=imgsz, batch=batch, workers=0, plots=False,
                                         verbose=False, **kw)
    return box_maps(metrics)


def kd_keys(teacher, distill_type: str = "yolo", alpha: float = 0.3) -> dict:
    """yoloprune's distillation keys with the setting measured best on YOLO26 (`yolo`, alpha 0.3)."""
    return {"distillation": True, "teacher_model": str(teacher), "distill_type": distill_type, "distill_alpha": alpha}
