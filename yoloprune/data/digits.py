"""A detection set made of real images: scikit-learn's handwritten digits (UCI, 1,797 scans of 8x8 pixels, ten
classes) composited onto textured scenes, so that no method is judged on drawn shapes alone.

Each digit is scaled up from its 8x8 scan (the blur of the upscale stays: these are low-resolution real strokes),
inked in a colour that stands out from the background under it, and blended in by its own intensity; later digits
occlude earlier ones. The box is that of the visible ink; a digit less than 40 % visible is left unlabelled. The
scans are split between the sets (every fifth scan goes to validation), so no scan is seen in both. Needs
scikit-learn (`pip install scikit-learn`); the same seed always writes the same files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from ..errors import UserError
from .synthetic import MIN_VISIBLE, _background

INK = 0.25  # blended share above which a pixel counts as the digit's ink


def _scans():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits set needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(int)


def _scene(rng: np.random.Generator, size: int, scans: np.ndarray, labels: np.ndarray, max_objects: int):
    img = _background(rng, size)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        k = int(rng.integers(len(scans)))
        side = max(8, int(rng.uniform(0.1, 0.3) * size))
        alpha = cv2.resize(scans[k], (side, side), interpolation=cv2.INTER_LINEAR)
        x0, y0 = (int(v) for v in rng.integers(-side // 4, size - 3 * side // 4, 2))
        canvas = np.zeros((size, size), np.float32)
        xs, ys = slice(max(x0, 0), min(x0 + side, size)), slice(max(y0, 0), min(y0 + side, size))
        canvas[ys, xs] = alpha[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        ink = canvas > INK
        if ink.sum() < 12:
            continue
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - img[ink].mean(0)).sum() < 150:  # ink that stands out from the background under it
            colour = rng.uniform(0, 255, 3)
        img = img * (1 - canvas[..., None]) + colour * canvas[..., None]
        for o in objects:
            o[2] = o[2] & ~ink  # this digit hides part of the earlier ones
        objects.append([int(labels[k]), int(ink.sum()), ink])
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, [(c, vis) for c, area, vis in objects if vis.sum() >= MIN_VISIBLE * area]


def make_digits_dataset(root, train: int = 256, val: int = 64, imgsz: int = 128, max_objects: int = 6,
                        seed: int = 0) -> Path:
    """Write the digits detection set in Ultralytics' format and return its `data.yaml`.

    Args:
        root: folder to write.
        train, val: number of scenes in each split.
        imgsz: square scene size in pixels.
        max_objects: most digits per scene.
        seed: scenes depend only on the seed and the arguments.

    Example:
        >>> data = make_digits_dataset("/tmp/digits", train=256, val=64, imgsz=128)
    """
    if train < 1 or val < 1 or imgsz < 32 or max_objects < 1:
        raise UserError("train and val need at least 1 image, imgsz at least 32 pixels, max_objects at least 1")
    scans, labels = _scans()
    held = np.arange(len(scans)) % 5 == 0
    root = Path(root)
    for split, count, offset, pick in (("train", train, 0, ~held), ("val", val, 10**6, held)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, objects = _scene(np.random.default_rng([seed, offset + i]), imgsz, scans[pick], labels[pick],
                                  max_objects)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img)
            lines = []
            for c, vis in objects:
                ys, xs = np.nonzero(vis)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                lines.append(f"{c} {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} {(x1 - x0) / imgsz:.6f} "
                             f"{(y1 - y0) / imgsz:.6f}")
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            "names": {i: str(i) for i in range(10)}}
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
