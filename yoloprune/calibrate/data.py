"""Calibration data: a fixed, reproducible sample of training images, without augmentation, held in memory.

The sample is drawn once (seeded) from the data set's training split, letterboxed to the calibration size exactly as
Ultralytics' validator does (no mosaic, no flips, no colour changes) and kept as ready batches, so every cut of one
search is scored, recalibrated and judged on the very same images. The last quarter of the batches (at least one) is
held back: recalibration is judged on images it did not see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.checks import resolve_data
from ..errors import UserError, check_whole

DEFAULT_IMAGES = 256
DEFAULT_BATCH = 16


@dataclass
class Calibration:
    """Batches of calibration images with their labels, in Ultralytics' batch format (`img` as uint8; `on_device`
    makes a batch ready for a model).

    Attributes:
        batches: every batch; `fit` are those used for scoring and BatchNorm statistics, `held` the held-back ones.
        source: where the images came from (the data.yaml and split), for the report.
        imgsz: the size the images were letterboxed to.
        task: the Ultralytics task of the labels.
    """

    batches: list[dict]
    source: str
    imgsz: int
    task: str
    seed: int = 0
    images: int = field(init=False)

    def __post_init__(self):
        self.images = sum(len(b["img"]) for b in self.batches)

    @property
    def fit(self) -> list[dict]:
        n = len(self.batches)
        return self.batches[: n - max(1, n // 4)] if n > 1 else self.batches

    @property
    def held(self) -> list[dict]:
        n = len(self.batches)
        return self.batches[n - max(1, n // 4):]

    def describe(self) -> dict:
        return {"source": self.source, "images": self.images, "batches": len(self.batches), "imgsz": self.imgsz,
                "fit_batches": len(self.fit), "held_batches": len(self.held), "seed": self.seed}


def load_calibration(data, imgsz: int, images: int = DEFAULT_IMAGES, task: str = "detect", batch: int = DEFAULT_BATCH,
                     seed: int = 0, split: str = "train") -> Calibration:
    """Draw `images` images (all, if fewer) from the `split` of an Ultralytics `data.yaml`, reproducibly.

    Args:
        data: path of a data.yaml (detect, segment, pose or obb labels), or an already resolved data dict.
        imgsz: calibration size (the size the model was trained at is the right one).
        images: how many images to draw.
        task: the model's task; it decides which labels are read.
        batch: images per batch.
        seed: which sample: the same seed always gives the same images.
        split: the data set split to draw from.

    Raises:
        UserError: a missing or unreadable data.yaml, a split without images, a classification model.
    """
    check_whole("calib_images", images, 1, str(DEFAULT_IMAGES))
    check_whole("imgsz", imgsz, 32, "640")
    if task == "classify":
        raise UserError("calibration data reads detection-style labels; classification models are slimmed without "
                        "--data (BatchNorm recalibration and data-aware importance are for detect, segment, pose, obb)")
    info = resolve_data(data)
    paths = info.get(split)
    if not paths:
        raise UserError(f"data '{data}' has no '{split}' split: the calibration sample is drawn from it")
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    from ..deploy.export import quiet_ultralytics

    cfg = get_cfg(overrides={"task": task, "imgsz": imgsz, "cache": False, "fraction": 1.0, "rect": False,
                             "single_cls": False, "classes": None})
    try:
        with quiet_ultralytics():
            dataset = build_yolo_dataset(cfg, paths, batch, info, mode="val", rect=False)
    except (FileNotFoundError, AssertionError, ValueError, OSError) as e:
        raise UserError(f"cannot read the '{split}' images of '{data}' ({str(e).strip().splitlines()[0]}); check "
                        "its paths") from None
    n = len(dataset)
    if n == 0:
        raise UserError(f"data '{data}' has no '{split}' images to calibrate with")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(images, n)].sort().values.tolist()
    batches = []
    for i in range(0, len(order), batch):
        items = [dataset[j] for j in order[i: i + batch]]
        batches.append(dataset.collate_fn(items))  # images kept as uint8: a quarter of the memory of floats
    return Calibration(batches, f"{data} ({split})", imgsz, task, seed)


def on_device(batch: dict, device) -> dict:
    """A calibration batch ready for the model: tensors on `device`, images as float in [0, 1]."""
    out = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["img"] = out["img"].float() / 255 if out["img"].dtype == torch.uint8 else out["img"].float()
    return out


def calibration_size(loaded, imgsz: int) -> int:
    """The size to calibrate at: the size the checkpoint was trained at, else `imgsz`."""
    args = loaded.ckpt.get("train_args") or {}
    size = args.get("imgsz") if isinstance(args, dict) else None
    if isinstance(size, (list, tuple)):
        size = max(size)
    return int(size) if isinstance(size, int) and size >= 32 else imgsz
