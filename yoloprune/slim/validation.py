"""What a cut cost, measured before any fine-tuning: validation mAP of base and slim by Ultralytics' own validator."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path


def validate_cut(slimmer, data, batch: int = 16) -> dict:
    """mAP50 and mAP50-95 on the data's validation split of the base, the slim model and (when BatchNorm was
    recalibrated) the slim model with the carried-over statistics; at the calibration size.

    Returns `{"imgsz", "split", "base": [mAP50, mAP50-95], "slim": [...], "slim_carried": [...] or None}`; it is also
    stored in the slimmer's report (`report.validation`).
    """
    from ..checkpoint import save_checkpoint
    from ..pipeline import validate

    if slimmer.model is None:
        slimmer.slim()
    imgsz = slimmer.calibration.imgsz if slimmer.calibration is not None else slimmer.imgsz
    out = {"imgsz": imgsz, "split": "val", "slim_carried": None}
    with tempfile.TemporaryDirectory(prefix="yoloprune-val-") as d:
        models = {"base": copy.deepcopy(slimmer.loaded.model), "slim": slimmer.model}
        if slimmer.carried is not None:
            models["slim_carried"] = slimmer.carried
        for key, model in models.items():
            path = save_checkpoint(copy.deepcopy(model), Path(d) / f"{key}.pt", slimmer.loaded)
            out[key] = [round(v, 4) for v in validate(path, data, imgsz, batch)]
    if slimmer.report is not None:
        slimmer.report.validation = out
    return out
