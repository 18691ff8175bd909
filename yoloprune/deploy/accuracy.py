"""The deployed model's accuracy: the exported graph validated on a data set beside the PyTorch model it came from.

Parity on one image says the two runtimes compute the same numbers there; it does not say the exported model detects
as well on a data set (a wrong resize, a lost output, a post-processing difference shows only over many images).
Both models go through Ultralytics' own validator with the same settings: the graph's input size, no rectangular
batches (a static graph takes square inputs), and the NMS-free output where the graph was exported with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MAX_GAP = 0.002  # largest mAP50-95 the exported model may lose against PyTorch
MEANINGFUL = 0.01  # below this mAP50-95 of PyTorch's own, two near-zero figures agree whatever the graph computes


@dataclass
class Accuracy:
    """mAP50 and mAP50-95 of the PyTorch model and of the exported graph on one validation split."""

    data: str
    imgsz: int
    torch: tuple[float, float]
    onnx: tuple[float, float]
    max_gap: float = MAX_GAP

    @property
    def gap(self) -> float:
        """mAP50-95 the exported graph loses against PyTorch (negative: it scores higher)."""
        return self.torch[1] - self.onnx[1]

    @property
    def ok(self) -> bool:
        return abs(self.gap) <= self.max_gap

    def format(self) -> str:
        text = (f"mAP50-95 on {self.data} (val) at {self.imgsz}: PyTorch {self.torch[1]:.4f}, ONNX Runtime "
                f"{self.onnx[1]:.4f} (gap {self.gap:+.4f}, allowed {self.max_gap:g}); mAP50 {self.torch[0]:.4f} / "
                f"{self.onnx[0]:.4f}")
        if self.torch[1] < MEANINGFUL:
            text += (f"\nnote: the PyTorch model itself scores under {MEANINGFUL} mAP50-95 at {self.imgsz}, so this "
                     "check says little; export at the size the model was trained at to check it")
        return text

    def to_dict(self) -> dict:
        return {"data": self.data, "imgsz": self.imgsz, "torch": list(self.torch), "onnx": list(self.onnx),
                "gap": round(self.gap, 6), "max_gap": self.max_gap}


def check_accuracy(onnx_path, pt, data, imgsz: int, end2end: bool = False, max_gap: float = MAX_GAP,
                   batch: int = 16) -> Accuracy:
    """Validate the exported graph and its PyTorch checkpoint on `data`'s validation split with the same settings.

    Args:
        onnx_path: the exported `.onnx`.
        pt: the checkpoint it was exported from.
        data: path of an Ultralytics data.yaml.
        imgsz: the graph's input size (both are validated at it).
        end2end: the graph has the NMS-free one-to-one output; PyTorch is then validated on that output too.
        max_gap: largest difference in mAP50-95 (either way) accepted.
        batch: validation batch of the PyTorch model (a static graph is validated at its own batch).

    Returns:
        The `Accuracy`; its `ok` says whether the gap is within `max_gap` (the caller decides what a failure costs).
    """
    from ..pipeline import validate

    kw = {"rect": False, **({"nms": False} if end2end else {})}
    try:
        ref = validate(pt, data, imgsz, batch, **kw)
        got = validate(onnx_path, data, imgsz, batch, **kw)
    except UserError:
        raise
    except Exception as e:  # Ultralytics raises several types for data it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot validate on data '{data}': {first}") from None
    return Accuracy(str(Path(str(data))), imgsz, tuple(round(v, 6) for v in ref), tuple(round(v, 6) for v in got),
                    max_gap)
