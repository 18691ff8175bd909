"""Every supported model YAML through the same checks: exact rewrite, exact cut, slim, train/eval forward, stock fold."""

import copy

import pytest
import torch
from conftest import max_abs_diff
from ultralytics import YOLO

from yoloprune import Slimmer
from yoloprune.graph.rewrite import SplitBlock, fold_blocks, rewrite_blocks
from yoloprune.shortcut_rules import ShortcutRules

SMALL = [
    "yolo26n.yaml",
    "yolo26n-seg.yaml",
    "yolo26n-pose.yaml",
    "yolo26n-obb.yaml",
    "yolo26n-cls.yaml",
    "yolo11n.yaml",
    "yolo11n-seg.yaml",
    "yolov8n.yaml",
]
SCALES = ["yolo26s.yaml", "yolo26m.yaml", "yolo26l.yaml", "yolo26x.yaml"]
MORE = ["yolo26n-p6.yaml", "yolov8n-pose.yaml", "yolo11n-obb.yaml", "yolov8n-cls.yaml"]
ALL = SMALL + SCALES + MORE


def _image(model, size=128, batch=1):
    torch.manual_seed(0)
    return torch.rand(batch, 3, size, size)


def _randomise_bn(model):
    """Trained-looking BatchNorm statistics, so rewrites are checked on non-trivial values."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


@pytest.mark.parametrize("cfg", ALL)
def test_rewrite_and_fold_are_exact(cfg):
    model = YOLO(cfg).model.eval()
    _randomise_bn(model)
    model.double()  # float64: any difference left is a real one, not float32 summation order
    x = _image(model).double()
    with torch.no_grad():
        ref = model(x)
        rewritten = copy.deepcopy(model)
        n = rewrite_blocks(rewritten)
        out = rewritten(x)
        fold_blocks(rewritten)
        folded = rewritten(x)
    d_rewrite, d_fold = max_abs_diff(ref, out), max_abs_diff(ref, folded)
    print(f"{cfg}: {n} blocks rewritten, max|diff| rewrite {d_rewrite:.2e}, fold {d_fold:.2e}")
    assert n > 0
    assert d_rewrite <= 1e-5 and d_fold <= 1e-5
    assert not any(isinstance(m, SplitBlock) for m in rewritten.modules())


@pytest.mark.parametrize("cfg", ALL)
def test_slim_shrinks_and_runs_in_train_and_eval(cfg):
    s = Slimmer(cfg, ratio=0.4, imgsz=320)
    base_params = sum(p.numel() for p in s.loaded.model.parameters())
    slim = s.slim()
    r = s.report
    assert r.after["params"] < r.before["params"] == base_params
    assert r.after["gflops"] < r.before["gflops"]
    assert any(a < b for b, a in r.layers.values()), "no layer got narrower"
    # the given model is untouched
    assert sum(p.numel() for p in s.loaded.model.parameters()) == base_params
    # only stock classes remain
    assert {type(m).__module__.split(".")[0] for m in slim.modules()} <= {"torch", "ultralytics"}
    slim.eval()
    with torch.no_grad():
        out = slim(_image(slim))
    assert out is not None
    slim.train()
    preds = slim(_image(slim, batch=2))
    loss_input = preds if torch.is_tensor(preds) else next(iter(preds.values()))
    assert loss_input is not None


def _zero_planned_channels(model, slimmer):
    """Zero, in a rewritten copy, exactly the channels each group will lose (BatchNorm gamma/beta, or conv rows)."""
    groups, plan, graph = slimmer._allocate(model)
    for g in groups:
        drop = g.width - plan[g.index].keep
        if drop <= 0:
            continue
        root_drop = set(range(g.width - drop, g.width))  # the last channels of the group's root
        for item in g.tp_group:
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            idx = [i for i, r in zip(item.idxs, item.root_idxs) if r in root_drop]
            m = item.dep.target.module
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data[idx] = 0
                m.bias.data[idx] = 0
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and not any(
                isinstance(o.dep.target.module, torch.nn.BatchNorm2d) for o in g.tp_group
            ):
                dim = 1 if isinstance(m, torch.nn.ConvTranspose2d) else 0
                m.weight.data.index_fill_(dim, torch.tensor(idx, dtype=torch.long), 0)
                if m.bias is not None:
                    m.bias.data[idx] = 0


@pytest.mark.parametrize("cfg", SMALL)
def test_cut_is_exact_when_removed_channels_are_zero(cfg):
    """Cutting channels that carry exact zeros must not change any output: proves index mapping through every
    concat, split and head branch (attention groups are held whole here: their inner q/k/v cut is not zero-exact)."""
    rules = ShortcutRules("no-attention", {"attention": 0.0, "residual": 1, "csp": 1, "concat": 1, "regular": 1})
    base = YOLO(cfg).model.eval()
    model = copy.deepcopy(base)
    rewrite_blocks(model)
    s = Slimmer(base, ratio=0.4, importance="bn", rules=rules, imgsz=320)
    _zero_planned_channels(model, s)
    model.eval()
    x = _image(model)
    with torch.no_grad():
        ref = model(x)
        slimmer = Slimmer(model, ratio=0.4, importance="bn", rules=rules, imgsz=320)
        slim = slimmer.slim().eval()
        out = slim(x)
    d = max_abs_diff(ref[0], out[0])  # decoded predictions (intermediate features narrow by design)
    print(f"{cfg}: params {slimmer.report.before['params']} -> {slimmer.report.after['params']}, max|diff| {d:.2e}")
    assert slimmer.report.after["params"] < slimmer.report.before["params"]
    assert d <= 1e-4


def test_same_inputs_give_same_widths():
    a = Slimmer("yolo26n.yaml", ratio=0.35).plan()
    b = Slimmer("yolo26n.yaml", ratio=0.35).plan()
    assert a.layers == b.layers
    base = YOLO("yolo26n.yaml").model
    r1 = Slimmer(base, ratio=0.35, importance="random").slim()
    r2 = Slimmer(base, ratio=0.35, importance="random").slim()
    assert all(torch.equal(p, q) for p, q in zip(r1.state_dict().values(), r2.state_dict().values()))


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "lamp", "random"])
def test_every_importance_slims(importance):
    s = Slimmer("yolo26n.yaml", ratio=0.3, importance=importance)
    s.slim()
    assert s.report.after["params"] < s.report.before["params"]


def test_round_to_and_clamp():
    s = Slimmer("yolo26n.yaml", ratio=0.95, round_to=16)
    s.slim()
    for row in s.report.groups:
        assert row.keep % 16 == 0 or row.keep == row.width
        assert row.keep >= min(16, row.width)
    assert s.report.clamped, "a 0.95 ratio must clamp some groups to round_to channels"
    assert "clamped" in s.report.format()


@pytest.mark.parametrize("cfg", ["yolo26n.yaml", "yolo26n-seg.yaml", "yolo26n-pose.yaml", "yolov8n.yaml"])
def test_fused_model_slims(cfg):
    """A model fused for inference (what `predict` leaves behind: no BatchNorm, frozen weights) slims too."""
    yolo = YOLO(cfg)
    yolo.model.fuse(verbose=False)
    s = Slimmer(yolo, ratio=0.3)
    slim = s.slim().eval()
    assert s.report.after["params"] < s.report.before["params"]
    with torch.no_grad():
        assert slim(_image(slim)) is not None
