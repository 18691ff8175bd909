"""ONNX export of base or slim checkpoints through Ultralytics' exporter, with a parity check in ONNX Runtime.

The export runs in a temporary folder beside the output; the `.onnx` is moved into place only after ONNX Runtime
and PyTorch agree on a real letterboxed image (Ultralytics' `bus.jpg`), so a failed export or parity check never
leaves a file behind.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

FORMATS = ("onnx",)


@dataclass
class ExportResult:
    path: Path
    max_abs: float
    max_rel: float
    outputs: list[tuple[int, ...]]

    def format(self) -> str:
        return (f"exported {self.path} (outputs {', '.join(str(s) for s in self.outputs)}); ONNX Runtime vs PyTorch "
                f"on bus.jpg: max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}")


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


def _torch_outputs(pt: Path, im: np.ndarray) -> list[np.ndarray]:
    """What the exported graph computes, in PyTorch: the fused model in eval mode with its head in export mode."""
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(str(pt))[0].float().eval()
    model = model.fuse() if hasattr(model, "fuse") else model
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # as Ultralytics' exporter sets every head
            if hasattr(m, "format"):
                m.format = "onnx"
    with torch.no_grad():
        return _flat(model(torch.from_numpy(im)))


def parity(onnx_path: Path, pt: Path, imgsz: int) -> tuple[float, float, list[tuple[int, ...]]]:
    """Max abs and relative difference between ONNX Runtime and PyTorch outputs on `bus.jpg`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    im = sample_image(imgsz, channels=inp.shape[1] if isinstance(inp.shape[1], int) else 3)
    got = sess.run(None, {inp.name: im})
    ref = _torch_outputs(pt, im)
    if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
        raise UserError(f"ONNX outputs {[a.shape for a in got]} do not match PyTorch's {[b.shape for b in ref]}")
    abs_diff = max(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in zip(got, ref))
    return abs_diff, max(_rel(a, b) for a, b in zip(got, ref)), [tuple(a.shape) for a in got]


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
           dynamic: bool = False, output=None, tolerance: float = 1e-4) -> ExportResult:
    """Export a YOLO checkpoint (base or slim) and check it against PyTorch.

    The relative difference is taken per output channel (see `_rel`).

    Args:
        model: a `.pt` checkpoint or a model YAML.
        format: `onnx`.
        imgsz: square export size.
        opset, simplify, dynamic: passed to Ultralytics' exporter.
        output: where the file goes (default: `<stem>.onnx` beside a `.pt`, in the current folder for a YAML).
        tolerance: largest relative difference accepted; a larger one is an error and nothing is written.

    Example:
        >>> print(export("yolo26n-slim.pt", imgsz=640).format())
    """
    from ..checkpoint import check_writable, load_model, save_checkpoint

    if format not in FORMATS:
        from ..errors import close_match

        raise UserError(f"format '{format}' is not supported{close_match(format, FORMATS)}; use onnx")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise UserError(f"imgsz {imgsz!r} must be a whole number >= 32 (e.g. 640)")
    loaded = load_model(model)
    src = Path(str(model))
    out = Path(output) if output else (src.with_suffix(".onnx") if src.suffix == ".pt" else Path.cwd() / f"{src.stem}.onnx")
    if out.suffix != ".onnx":
        raise UserError(f"output '{out}' must end in .onnx")
    check_writable(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.resolve().parent))
    try:
        pt = work / "model.pt"
        save_checkpoint(loaded.model, pt, loaded)
        from ultralytics import YOLO

        kw = {"opset": opset} if opset else {}
        made = Path(YOLO(str(pt)).export(format="onnx", imgsz=imgsz, simplify=simplify, dynamic=dynamic,
                                         verbose=False, **kw))
        max_abs, max_rel, shapes = parity(made, pt, imgsz)
        if not max_rel <= tolerance:
            raise UserError(f"ONNX parity failed: max relative difference {max_rel:.3g} > {tolerance:g} "
                            f"(max abs {max_abs:.3g}); nothing written")
        made.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, max_abs, max_rel, shapes)
