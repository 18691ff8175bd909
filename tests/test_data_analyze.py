"""The synthetic dataset generator, the sparsity regularizers' API and `yoloprune analyze`."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from yoloprune.data import make_dataset
from yoloprune.errors import UserError
from yoloprune.train import L1Regularizer, StructuredL1Regularizer

COLUMNS = {"detect": 5, "obb": 9, "pose": 5 + 4 * 3}


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".yaml":
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb", "classify"])
def test_dataset_is_deterministic_and_valid(task, tmp_path):
    make_dataset(tmp_path / "a", task, train=6, val=3, imgsz=96, seed=7)
    make_dataset(tmp_path / "b", task, train=6, val=3, imgsz=96, seed=7)
    make_dataset(tmp_path / "c", task, train=6, val=3, imgsz=96, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    if task == "classify":
        assert sorted(p.name for p in (tmp_path / "a/train").iterdir()) == ["circle", "square", "triangle"]
        return
    labels = list((tmp_path / "a/labels/train").glob("*.txt"))
    assert len(labels) == 6
    n = 0
    for f in labels:
        for line in f.read_text().splitlines():
            v = np.array(line.split(), dtype=float)
            assert int(v[0]) in (0, 1, 2) and ((v[1:] >= 0) & (v[1:] <= 2)).all()
            if task in COLUMNS:
                assert len(v) == COLUMNS[task], line
            else:
                assert len(v) >= 7 and len(v) % 2 == 1
            n += 1
    assert n >= 6  # several objects per image on average


def test_occluded_objects_are_labelled_by_their_visible_part(tmp_path):
    make_dataset(tmp_path, "detect", train=40, val=1, imgsz=128, max_objects=6, seed=3)
    counts = [len(p.read_text().splitlines()) for p in (tmp_path / "labels/train").glob("*.txt")]
    assert max(counts) >= 4 and min(counts) >= 0


def test_hard_preset_has_smaller_objects_and_clutter(tmp_path):
    """The hard preset: objects smaller on average, the scenes busier; deterministic like the normal one."""
    def boxes(root):
        return np.array([[float(x) for x in line.split()] for f in sorted((root / "labels/train").glob("*.txt"))
                         for line in f.read_text().splitlines()])

    normal = make_dataset(tmp_path / "n", "detect", train=12, val=1, imgsz=128, classes=8, max_objects=8).parent
    hard = make_dataset(tmp_path / "h", "detect", train=12, val=1, imgsz=128, classes=8, max_objects=8,
                        preset="hard").parent
    again = make_dataset(tmp_path / "h2", "detect", train=12, val=1, imgsz=128, classes=8, max_objects=8,
                         preset="hard").parent
    assert digest(hard) == digest(again) != digest(normal)
    area_n, area_h = (np.median(b[:, 3] * b[:, 4]) for b in (boxes(normal), boxes(hard)))
    print(f"median box area: normal {area_n:.4f}, hard {area_h:.4f}")
    assert area_h < area_n / 2 and set(boxes(hard)[:, 0].astype(int)) <= set(range(8))
    with pytest.raises(UserError, match="preset 'hrad' is unknown"):
        make_dataset(tmp_path / "x", preset="hrad")


def test_digits_set_is_real_handwriting_split_by_scan(tmp_path):
    """The digits set: deterministic, ten classes of real scans, boxes inside the image; detect only."""
    from yoloprune.data import make_digits_dataset
    from yoloprune.data import digits

    a = make_digits_dataset(tmp_path / "a", train=8, val=4, imgsz=96, seed=1).parent
    b = make_digits_dataset(tmp_path / "b", train=8, val=4, imgsz=96, seed=1).parent
    assert digest(a) == digest(b)
    rows = np.array([[float(x) for x in line.split()] for f in (a / "labels").rglob("*.txt")
                     for line in f.read_text().splitlines()])
    assert len(rows) >= 12 and set(rows[:, 0].astype(int)) <= set(range(10))
    assert ((rows[:, 1:] > 0) & (rows[:, 1:] <= 1)).all()
    scans, _ = digits._scans()
    assert len(scans) == 1797 and scans.max() == 1.0
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "dataset", str(tmp_path / "c"), "--preset", "digits",
                        "--task", "segment"], capture_output=True, text=True)
    assert r.returncode == 2 and "detect only" in r.stderr and not (tmp_path / "c").exists()


def test_regularizer_gradient_matches_autograd():
    from ultralytics import YOLO

    model = YOLO("yolo26n-seg.yaml").model.float()
    for reg in (L1Regularizer(1e-3), StructuredL1Regularizer(1e-3, 1e-2)):
        model.zero_grad(set_to_none=True)
        reg(model).backward()
        auto = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        reg.add_grad_(model, 1.0)
        direct = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        diff = max((auto[k] - direct[k]).abs().max().item() for k in auto)
        print(type(reg).__name__, "max|autograd - add_grad_|", diff)
        assert auto.keys() == direct.keys() and diff < 1e-7


def test_get_sparsity_counts_zeros():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[0].weight[:2] = 0
        net[1].weight[:] = torch.tensor([0.0, 0.5, 0.0, 2.0])
    s = L1Regularizer().get_sparsity(net)
    assert s["overall_sparsity"] == 0.5 and s["channel_sparsity"] == 0.5 and s["bn_sparsity"] == 0.5
    assert s["bn_gamma"]["max"] == 2.0 and "0" in s["layers"]
    with pytest.raises(ValueError):
        L1Regularizer(-1)


def test_cli_analyze(tmp_path):
    hist, js = tmp_path / "gamma.png", tmp_path / "a.json"
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "analyze", "yolo26n.yaml", "--hist", str(hist),
                        "--json", str(js)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for text in ("weight sparsity", "channel sparsity", "BN gamma", "residual", "attention", "csp", "concat"):
        assert text in r.stdout
    assert hist.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    assert json.loads(js.read_text())["groups"]["residual"]["groups"] > 0
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "analyze", str(tmp_path / "missing.pt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
