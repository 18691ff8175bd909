"""Layer pruning: removing a block whose branch is zero changes nothing; every model keeps working; CLI --method layer."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from ultralytics.nn.modules import Conv

from conftest import max_abs_diff
from yoloprune.slim.depth import LayerPruner, find_units, remove_units

YAMLS = ["yolo26n.yaml", "yolo26s.yaml", "yolov8s.yaml", "yolo11n-seg.yaml", "yolo26n-pose.yaml", "yolo26n-cls.yaml",
         "yolo26l.yaml"]


def build(yaml):
    from ultralytics import YOLO

    return YOLO(yaml).model.double().eval()


def zero_branch(unit: nn.Module) -> None:
    """Make a residual unit's branch output exactly zero (its last conv's BN gamma and beta)."""
    convs = [m for m in unit.modules() if isinstance(m, Conv)]
    last = convs[-1]
    with torch.no_grad():
        last.bn.weight.zero_()
        last.bn.bias.zero_()


@pytest.mark.parametrize("yaml", YAMLS)
def test_removing_a_zero_block_is_exact(yaml):
    model = build(yaml)
    units = find_units(model, "l1")
    assert units, "no removable blocks found"
    mods = dict(model.named_modules())
    chosen, seen = [], set()
    for u in units:  # one residual bottleneck from each of (up to) two blocks; each block keeps a unit
        if u.type == "Bottleneck" and getattr(mods[u.name], "add", False) and u.container not in seen:
            chosen.append(u)
            seen.add(u.container)
    chosen = chosen[:2]
    if not chosen:
        pytest.skip("no residual bottleneck to zero")
    for u in chosen:
        zero_branch(mods[u.name])
        owner_list = mods[u.container]
        if u.kind == "concat":  # its output also feeds cv2 directly: make those columns zero too
            owner = mods[u.container.rpartition(".")[0]]
            half = owner.cv1.conv.out_channels // 2
            width = owner.cv2.conv.in_channels - 2 * half
            per = width // len(owner_list)
            with torch.no_grad():
                owner.cv2.conv.weight[:, 2 * half + u.index * per: 2 * half + (u.index + 1) * per] = 0
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        cut = remove_units(copy.deepcopy(model), [u.name for u in chosen])
        after = cut(x)
    d = max_abs_diff(before, after)
    print(f"{yaml}: removed {[u.name for u in chosen]}, max|diff| {d:.2e}")
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in model.parameters())
    assert d < 1e-9


def test_bn_importance_picks_the_dead_block():
    model = build("yolo26s.yaml").float()
    units = find_units(model, "bn")
    target = units[len(units) // 2]
    mods = dict(model.named_modules())
    zero_branch(mods[target.name])
    lp = LayerPruner(model, ratio=1 / len(units) + 1e-6, importance="bn", imgsz=64)
    lp.slim()
    assert [u.name for u in lp.report.removed] == [target.name]


def test_layer_pruned_model_runs_and_trains_shapes():
    lp = LayerPruner("yolo26s.yaml", ratio=0.5, imgsz=64)
    slim = lp.slim()
    assert lp.report.removed and lp.report.after["params"] < lp.report.before["params"]
    slim.train()
    out = slim(torch.rand(2, 3, 64, 64))
    assert out is not None
    twin = lp.cut_like(lp.loaded.model)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in slim.parameters()]


def test_cli_slim_method_layer(tmp_path, bus_jpg):
    out = tmp_path / "layer.pt"
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "slim", "yolo26s.yaml", "--method", "layer", "--ratio",
                        "0.5", "--imgsz", "320", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layer pruning: removed" in r.stdout
    code = ("import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); m.predict(sys.argv[2], imgsz=320, "
            "verbose=False); assert 'yoloprune' not in sys.modules; print(sum(p.numel() for p in m.model.parameters()))")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(bus_jpg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
