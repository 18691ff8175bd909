"""A deterministic synthetic dataset: textured scenes of shapes, labelled for detect, segment, pose, obb or classify.

Every object is a polygon (circle, square, triangle, star, hexagon, ...), drawn in order so later objects occlude
earlier ones. Labels describe what stays visible: the box, outline and oriented box of the visible pixels; objects
less than 40 % visible are left unlabelled, as an annotator would. Pose labels are the polygon's four extreme points
(left, top, right, bottom) with visibility 2 when the pixel is seen and 1 when it is hidden. The same seed always
writes the same files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..errors import UserError

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "pentagon")
TASKS = ("detect", "segment", "pose", "obb", "classify")
MIN_VISIBLE = 0.4


@dataclass(frozen=True)
class Preset:
    """How hard the scenes are: object sizes (radius as a share of the image), how thin they may be, how close
    their colour may come to the background's, and how many unlabelled distractors clutter the scene."""

    radius: tuple[float, float] = (0.07, 0.22)
    thinnest: float = 1.0  # objects are squeezed along one axis down to this share of their width
    contrast: float = 120.0  # least summed RGB distance between an object and the background under it
    clutter: int = 0  # most unlabelled distractors (strokes and blobs unlike any class) per image


PRESETS = {"normal": Preset(),
           "hard": Preset(radius=(0.035, 0.12), thinnest=0.35, contrast=60.0, clutter=6)}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float, squeeze: float = 1.0) -> np.ndarray:
    """Vertices (N, 2) of a shape of radius `r` centred on (cx, cy), squeezed to `squeeze` of its height and turned
    by `angle` radians."""
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        rad = np.full_like(t, r)
    elif kind == "star":
        t = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif kind == "cross":
        a, b = r, 0.35 * r
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                        (-a, -b), (-b, -b)])
        t, rad = np.arctan2(pts[:, 1], pts[:, 0]), np.hypot(pts[:, 0], pts[:, 1])
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6, "diamond": 4, "pentagon": 5}[kind]
        t = np.linspace(0, 2 * math.pi, sides, endpoint=False) + (math.pi / 4 if kind == "square" else 0)
        rad = np.full_like(t, r) * (np.array([1.0, 0.6] * (sides // 2)) if kind == "diamond" else 1.0)
    x, y = rad * np.cos(t), rad * np.sin(t) * squeeze
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth colour noise, a gradient and sometimes stripes."""
    low = rng.uniform(40, 215, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(-30, 30, size, dtype=np.float32)
    img += (ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]) * rng.uniform(-1, 1)
    if rng.random() < 0.5:
        period = rng.uniform(6, 24)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
        img += (wave * rng.uniform(8, 25))[..., None]
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, size: int, n: int) -> None:
    """Up to `n` unlabelled distractors: straight strokes and open rings, nothing a filled class shape looks like."""
    for _ in range(int(rng.integers(0, n + 1))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        width = max(1, int(rng.uniform(0.005, 0.02) * size))
        if rng.random() < 0.5:
            p0, p1 = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, width)
        else:
            centre = tuple(int(v) for v in rng.uniform(0, size, 2))
            axes = tuple(max(2, int(v)) for v in rng.uniform(0.03, 0.1, 2) * size)
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(180, 300)),
                        colour, width)


def _scene(rng: np.random.Generator, size: int, classes: int, max_objects: int, single: int | None = None,
           preset: Preset = PRESETS["normal"]):
    """Draw one image (one object of class `single` if given); return it with (class, polygon, visible mask)."""
    img = _background(rng, size)
    if preset.clutter:
        _clutter(rng, img, size, preset.clutter)
    objects = []
    n = 1 if single is not None else int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        c = int(rng.integers(classes)) if single is None else single
        r = rng.uniform(0.25, 0.4) * size if single is not None else rng.uniform(*preset.radius) * size
        cx, cy = (size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size) if single \
            else (rng.uniform(0.05, 0.95) * size, rng.uniform(0.05, 0.95) * size)
        squeeze = rng.uniform(preset.thinnest, 1.0) if preset.thinnest < 1 else 1.0
        poly = _polygon(SHAPES[c], cx, cy, r, rng.uniform(0, 2 * math.pi), squeeze)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        if mask.sum() < 16:
            continue
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - img[mask > 0].mean(0)).sum() < preset.contrast:  # keep the object distinguishable
            colour = rng.uniform(0, 255, 3)
        shade = colour + rng.normal(0, 10, (size, size, 3))
        img = np.where(mask[..., None] > 0, shade, img)
        for o in objects:
            o[3] = o[3] & (mask == 0)  # this object hides part of the earlier ones
        objects.append([c, poly, mask.sum(), mask.astype(bool)])
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return img, [(c, poly, vis) for c, poly, area, vis in objects if vis.sum() >= MIN_VISIBLE * area]


def _label(task: str, c: int, poly: np.ndarray, vis: np.ndarray, size: int) -> str | None:
    ys, xs = np.nonzero(vis)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    box = [(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size]
    if task == "detect":
        vals = box
    elif task == "segment":
        contours, _ = cv2.findContours(vis.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 0.7, True).reshape(-1, 2)
        if len(contour) < 3:
            return None
        vals = (contour.astype(np.float64) / size).flatten().tolist()
    elif task == "obb":
        rect = cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32))
        vals = np.clip(cv2.boxPoints(rect) / size, 0, 1).flatten().tolist()
    else:  # pose: box + (x, y, visibility) of the polygon's left, top, right and bottom points
        clipped = np.clip(poly, 0, size - 1)
        kpts = [clipped[clipped[:, 0].argmin()], clipped[clipped[:, 1].argmin()],
                clipped[clipped[:, 0].argmax()], clipped[clipped[:, 1].argmax()]]
        vals = list(box)
        for x, y in kpts:
            seen = vis[min(int(round(y)), size - 1), min(int(round(x)), size - 1)]
            vals += [x / size, y / size, 2 if seen else 1]
    return f"{c} " + " ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in vals)


def make_dataset(root, task: str = "detect", train: int = 32, val: int = 16, imgsz: int = 160, classes: int = 3,
                 max_objects: int = 5, seed: int = 0, preset: str = "normal") -> Path:
    """Write a synthetic dataset in Ultralytics' format and return what `data=` takes.

    Args:
        root: folder to write (created; existing files of the same names are overwritten).
        task: `detect`, `segment`, `pose`, `obb` or `classify`.
        train, val: number of images in each split.
        imgsz: square image size in pixels.
        classes: number of shape classes (at most 8: circle, square, triangle, star, hexagon, cross, diamond, pentagon).
        max_objects: most objects per image (classification images hold one).
        seed: images depend only on the seed and the arguments.
        preset: `normal`, or `hard`: smaller objects (3.5-12 % of the image), squeezed down to a third of their
            width, lower contrast, and up to 6 unlabelled distractors per image (use it with more classes and objects).

    Returns:
        The `data.yaml` path (detect, segment, pose, obb) or the dataset folder (classify).

    Example:
        >>> data = make_dataset("/tmp/shapes", task="detect", train=32, val=16)
        >>> YOLO("yolo26n.yaml").train(data=str(data), epochs=3, imgsz=160)
    """
    if task not in TASKS:
        from ..errors import close_match

        raise UserError(f"task '{task}' is unknown{close_match(task, TASKS)}; choose one of {', '.join(TASKS)}")
    if not 1 <= classes <= len(SHAPES):
        raise UserError(f"classes {classes!r} must be between 1 and {len(SHAPES)}")
    if preset not in PRESETS:
        from ..errors import close_match

        raise UserError(f"preset '{preset}' is unknown{close_match(preset, PRESETS)}; choose one of {', '.join(PRESETS)}")
    if train < 1 or val < 1 or imgsz < 32 or max_objects < 1:
        raise UserError("train and val need at least 1 image, imgsz at least 32 pixels, max_objects at least 1")
    root = Path(root)
    names = {i: SHAPES[i] for i in range(classes)}
    for split, count, offset in (("train", train, 0), ("val", val, 10**6)):
        for i in range(count):
            rng = np.random.default_rng([seed, offset + i])
            single = i % classes if task == "classify" else None  # balanced classes for classification
            img, objects = _scene(rng, imgsz, classes, max_objects, single=single, preset=PRESETS[preset])
            if task == "classify":
                folder = root / split / names[single]
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{i:05d}.png"), img)
                continue
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), img)
            lines = [s for c, poly, vis in objects if (s := _label(task, c, poly, vis, imgsz))]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    if task == "classify":
        return root
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": names}
    if task == "pose":
        data.update(kpt_shape=[4, 3], flip_idx=[2, 1, 0, 3])  # a horizontal flip swaps the left and right points
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
