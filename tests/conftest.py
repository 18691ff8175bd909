"""Test set-up: Ultralytics fully offline with a private config folder, and shared helpers."""

import tempfile

from yoloprune.offline import use_offline

use_offline(tempfile.mkdtemp(prefix="yoloprune-test-cfg-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def flat_tensors(out):
    """All tensors of a model output (tensor, tuple, list or dict), in order."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    return []


def max_abs_diff(a, b) -> float:
    """Largest |a - b| over all tensors of two outputs of the same structure."""
    ta, tb = flat_tensors(a), flat_tensors(b)
    assert len(ta) == len(tb) and ta, "outputs differ in structure"
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(ta, tb))


@pytest.fixture(scope="session")
def bus_jpg():
    from pathlib import Path

    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


# Short, deterministic training settings for tiny models on the synthetic set.
FAST = dict(imgsz=64, batch=8, nbs=8, workers=0, plots=False, amp=False, seed=0, deterministic=True, exist_ok=True)


def small_model(yaml="yolo26n.yaml", nc=3, **kw):
    """A YAML-built model of any task for `nc` classes (extra keywords go to its class, e.g. data_kpt_shape)."""
    from ultralytics.nn.tasks import (ClassificationModel, DetectionModel, OBBModel, PoseModel, SegmentationModel,
                                      guess_model_task, yaml_model_load)

    task = guess_model_task(yaml_model_load(yaml))
    cls = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel, "obb": OBBModel,
           "classify": ClassificationModel}[task]
    return cls(yaml, nc=nc, verbose=False, **kw)


def save_model(model, path):
    """Write `model` as an Ultralytics checkpoint at `path`."""
    from yoloprune.checkpoint import LoadedModel, save_checkpoint

    return save_checkpoint(model, path, LoadedModel(model, str(path), True))


def results_rows(run) -> list[dict]:
    """The rows of a run's results.csv, as floats."""
    import csv

    with open(run / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(f)]


class Killed(Exception):
    """Raised by `kill_after` to stop a run as a kill would."""


def kill_after(epoch: int):
    """An `on_model_save` callback that stops training right after epoch `epoch` (0-based) was saved."""

    def kill(trainer):
        if trainer.epoch == epoch:
            raise Killed

    return kill


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A yolo26n trained briefly on one class of shapes (about 40 s): its validation mAP is far enough above zero
    that what a graph computing something else would lose shows in the mAP."""
    from ultralytics import YOLO

    from yoloprune.data import make_dataset

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "shapes", "detect", train=32, val=8, imgsz=64, classes=1)
    YOLO("yolo26n.yaml").train(data=str(data), epochs=30, mosaic=0, warmup_epochs=0, val=False, project=str(root),
                               name="run", verbose=False, **FAST)
    return root / "run" / "weights" / "last.pt", data
