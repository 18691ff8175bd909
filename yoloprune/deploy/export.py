"""ONNX export of base or slim checkpoints through Ultralytics' exporter, with a parity check in ONNX Runtime.

The export runs in a temporary folder beside the output; the `.onnx` is moved into place only after ONNX Runtime
and PyTorch agree on a real letterboxed image (Ultralytics' `bus.jpg`), so a failed export or parity check never
leaves a file behind.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, check_whole
from .accuracy import MAX_GAP, Accuracy, check_accuracy

FORMATS = ("onnx",)


@dataclass
class ExportResult:
    path: Path
    max_abs: float
    max_rel: float
    outputs: list[tuple[int, ...]]
    compared: int | None = None  # NMS-free output: detections surely in the top-k of both runtimes, compared
    accuracy: Accuracy | None = None  # with data: the graph validated beside PyTorch

    def format(self) -> str:
        what = f" over {self.compared} detections" if self.compared is not None else ""
        text = (f"exported {self.path} (outputs {', '.join(str(s) for s in self.outputs)}); ONNX Runtime vs PyTorch "
                f"on bus.jpg{what}: max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}")
        return text + (f"\n{self.accuracy.format()}" if self.accuracy is not None else "")


@contextlib.contextmanager
def quiet_ultralytics():
    """Ultralytics' logger shows warnings and errors only, for the duration."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def sample_image(imgsz: int, channels: int = 3) -> np.ndarray:
    """Ultralytics' `bus.jpg` letterboxed to `imgsz`, as a float32 (1, C, H, W) array in [0, 1]."""
    import cv2
    import ultralytics
    from ultralytics.data.augment import LetterBox

    img = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / "bus.jpg"))
    img = LetterBox((imgsz, imgsz), auto=False)(image=img)
    img = img[..., ::-1].transpose(2, 0, 1)[None] / 255.0  # BGR -> RGB, HWC -> CHW
    if channels == 1:
        img = img.mean(1, keepdims=True)
    return np.ascontiguousarray(img, dtype=np.float32)


def _flat(out) -> list[np.ndarray]:
    if torch.is_tensor(out):
        return [out.detach().float().cpu().numpy()]
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _flat(o)]
    return []


def _torch_outputs(pt: Path, im: np.ndarray, end2end: bool = False) -> list[np.ndarray]:
    """What the exported graph computes, in PyTorch: the fused model in eval mode with its head in export mode."""
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(str(pt))[0].float().eval()
    if hasattr(model, "end2end"):
        model.end2end = end2end  # as the exporter sets it from nms=False / None
    model = model.fuse() if hasattr(model, "fuse") else model
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # as Ultralytics' exporter sets every head
            if hasattr(m, "format"):
                m.format = "onnx"
    with torch.no_grad():
        return _flat(model(torch.from_numpy(im)))


def parity(onnx_path: Path, pt: Path, imgsz: int, end2end: bool = False):
    """Max abs and relative difference between ONNX Runtime and PyTorch outputs on `bus.jpg` (repeated to the
    graph's batch size), the output shapes, and for an NMS-free output the number of detections compared."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    im = sample_image(imgsz, channels=inp.shape[1] if isinstance(inp.shape[1], int) else 3)
    im = np.repeat(im, inp.shape[0] if isinstance(inp.shape[0], int) else 1, axis=0)
    got = sess.run(None, {inp.name: im})
    ref = _torch_outputs(pt, im, end2end)
    if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
        raise UserError(f"ONNX outputs {[a.shape for a in got]} do not match PyTorch's {[b.shape for b in ref]}")
    shapes, compared = [tuple(a.shape) for a in got], None
    if end2end:
        first = _match_detections(got[0], ref[0])  # the detections; later outputs (mask prototypes) keep their order
        got, ref = [first[0], *got[1:]], [first[1], *ref[1:]]
        compared = len(got[0])
    abs_diff = max(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in zip(got, ref))
    return abs_diff, max(_rel(a, b) for a, b in zip(got, ref)), shapes, compared


def _match_detections(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Pair the rows of two NMS-free outputs (`(batch, k, 6 + extra)`: box, score, class, ...) for comparison.

    Top-k keeps detections in score order, and detections whose scores tie to within rounding may come out in
    either order (or, at the k-th place, either may be kept). Rows that are surely in both outputs (score above the
    lowest kept score by more than `tol`) are paired with the row of the other output that has the same class and a
    score within `tol` and differs least; a row with no such partner is compared with its own position, so it fails.
    """
    pa, pb = [], []
    for x, y in zip(a, b):
        x = x[x[:, 4] > max(x[:, 4].min(), y[:, 4].min()) + tol]
        d = np.abs(x[:, None, :] - y[None, :, :]).max(-1)
        same = (np.abs(x[:, None, 4] - y[None, :, 4]) <= tol) & (x[:, None, 5] == y[None, :, 5])
        j = np.where(same, d, np.inf).argmin(1) if len(x) else np.zeros(0, dtype=int)
        j = np.where(same[np.arange(len(x)), j], j, np.arange(len(x)))
        pa.append(x)
        pb.append(y[j])
    return np.concatenate(pa), np.concatenate(pb)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the magnitude of its own output channel (boxes in pixels and scores in [0, 1]
    share one tensor: one scale for both would hide score errors); channels below 0.01 are measured against 0.01."""
    if not a.size:
        return 0.0
    if a.ndim < 2:
        a, b = a[None], b[None]
    axes = tuple(i for i in range(a.ndim) if i != 1)
    scale = np.maximum(np.abs(b).max(axis=axes), 1e-2)
    return float((np.abs(a - b).max(axis=axes) / scale).max())


def export(model, format: str = "onnx", imgsz: int = 640, opset: int | None = None, simplify: bool = True,
           dynamic: bool = False, output=None, tolerance: float = 1e-4, end2end: bool = False, batch: int = 1,
           verbose: bool = True, data=None, max_map_gap: float = MAX_GAP) -> ExportResult:
    """Export a YOLO checkpoint (base or slim) and check it against PyTorch.

    The relative difference is taken per output channel (see `_rel`).

    Args:
        model: a `.pt` checkpoint, a model YAML, or a YOLO model object (as `load_model` takes).
        format: `onnx`.
        imgsz: square export size.
        opset, simplify, dynamic, batch: passed to Ultralytics' exporter.
        end2end: export the NMS-free one-to-one head output (`(batch, 300, 6)` boxes for detection) of models that
            have one (YOLO26); default: the raw head output that needs NMS (`(batch, 4 + classes, anchors)`).
        verbose: print the exporter's progress.
        output: where the file goes (default: `<stem>.onnx` beside a `.pt`, in the current folder for a YAML;
            `model.onnx` there for a model object).
        tolerance: largest relative difference accepted; a larger one is an error and nothing is written.
        data: a data.yaml: the exported graph and the PyTorch model are validated on its validation split at
            `imgsz` (Ultralytics' validator, same settings); an mAP50-95 gap above `max_map_gap` is an error and
            nothing is written.

    Example:
        >>> print(export("yolo26n-slim.pt", imgsz=640).format())
    """
    from ..checkpoint import check_writable, load_model, save_checkpoint

    if format not in FORMATS:
        from ..errors import close_match

        raise UserError(f"format '{format}' is not supported{close_match(format, FORMATS)}; use onnx")
    check_whole("imgsz", imgsz, 32, "640")
    check_whole("batch", batch, 1)
    loaded = load_model(model)
    if data is not None:
        from ..data.checks import check_classes, resolve_data

        resolve_data(data)
        check_classes(loaded.model, data, "pass the data the model was trained on")
    if not max_map_gap >= 0:
        raise UserError(f"max_map_gap {max_map_gap!r} must be a number >= 0, e.g. {MAX_GAP}")
    if end2end and getattr(loaded.model.model[-1], "one2one_cv2", None) is None:
        raise UserError(f"'{loaded.source}' has no NMS-free (one-to-one) head: export it without --end2end")
    if output:
        out = Path(output)
    else:
        src = Path(str(model)) if isinstance(model, (str, Path)) else Path("model")
        out = src.with_suffix(".onnx") if src.suffix == ".pt" else Path.cwd() / f"{src.stem}.onnx"
    if out.suffix != ".onnx":
        raise UserError(f"output '{out}' must end in .onnx")
    check_writable(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.resolve().parent))
    try:
        pt = work / "model.pt"
        save_checkpoint(loaded.model, pt, loaded)
        from ultralytics import YOLO

        kw = {"opset": opset} if opset else {}
        with contextlib.nullcontext() if verbose else quiet_ultralytics():
            made = Path(YOLO(str(pt)).export(format="onnx", imgsz=imgsz, simplify=simplify, dynamic=dynamic,
                                             batch=batch, nms=False if end2end else None, verbose=False, **kw))
            max_abs, max_rel, shapes, compared = parity(made, pt, imgsz, end2end)
        if not max_rel <= tolerance:
            raise UserError(f"ONNX parity failed: max relative difference {max_rel:.3g} > {tolerance:g} "
                            f"(max abs {max_abs:.3g}); nothing written")
        accuracy = None
        if data is not None:
            accuracy = check_accuracy(made, pt, data, imgsz, end2end, max_map_gap)
            if not accuracy.ok:
                raise UserError(f"the exported model's accuracy differs from PyTorch's: {accuracy.format()}; "
                                "nothing written")
        made.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, max_abs, max_rel, shapes, compared, accuracy)
