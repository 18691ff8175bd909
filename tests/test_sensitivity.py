"""Sensitivity allocation: measured loss rise per group, masking as exact as cutting, widths bought by loss per cost."""

import copy

import pytest
import torch

from yoloprune import Slimmer
from yoloprune.calibrate import load_calibration
from yoloprune.errors import UserError
from yoloprune.graph.rewrite import rewrite_blocks
from yoloprune.slim import sensitivity as S
from yoloprune.slim.budget import CostModel, allocate_budget, conv_sites

from conftest import small_model


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from yoloprune.data import make_dataset

    data = make_dataset(tmp_path_factory.mktemp("shapes"), "detect", train=24, val=8, imgsz=64)
    return load_calibration(data, imgsz=64, images=16, batch=8)


def _dead_model(weights, dead_layer: int = 1):
    """The trained model with layer `dead_layer` (a plain Conv, one group) carrying nothing in half its channels."""
    from yoloprune.checkpoint import load_model

    model = load_model(weights).model.float()
    conv = model.model[dead_layer]
    half = list(range(0, conv.conv.out_channels, 2))
    with torch.no_grad():
        conv.conv.weight[half] = 0
        conv.bn.weight[half] = 0
        conv.bn.bias[half] = 0
    return model


def test_masking_computes_what_the_cut_model_computes(calib):
    """Zeroing a unit's producers gives the same outputs as physically removing its channels (every few units)."""
    s = Slimmer(small_model(), ratio=0.5, round_to=8, imgsz=64)
    model = copy.deepcopy(s.loaded.model).float().eval()
    rewrite_blocks(model)
    groups, graph, _, _ = s.structure(model)
    scorer = s._scorer(model, graph, groups)
    by = {g.root_name: g for g in groups}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 64, 64)
    units = S.units(s)
    checked = 0
    for u in units[:: max(1, len(units) // 4)]:
        w = S.probe_widths(u)[-1]
        gs = [by[n] for n in u.names]
        masked = all(S.mask_cut(graph, g.tp_group, torch.argsort(scorer(g.tp_group, g.root_name), stable=True)
                                [: g.width - w].tolist()) for g in gs)
        if not masked:  # attention inside: measured by a physical cut instead
            model.load_state_dict(original)
            continue
        with torch.no_grad():
            a = model(x)[0]
        model.load_state_dict(original)
        s.widths = dict.fromkeys(u.names, w)
        with torch.no_grad():
            b = s.slim().eval()(x)[0]
        diff = (a - b).abs().max().item()
        print(f"{u.key}: {u.width} -> {w}, max |masked - cut| {diff:.2e}")
        assert diff < 1e-4 * max(1.0, b.abs().max().item())
        checked += 1
    assert checked >= 3


def test_a_group_that_carries_nothing_measures_no_rise_and_is_thinned_first(trained, tmp_path):
    """The same trained model twice: as it is, and with half the channels of one plain Conv group zeroed (they carry
    nothing). The dead half measures no loss rise, and at the same MAC budget the sensitivity allocation thins that
    group to its live half, while it keeps more of it in the intact model, where those channels matter."""
    from yoloprune.checkpoint import load_model

    weights, data = trained
    calib = load_calibration(data, imgsz=64, images=16, batch=8)
    key, keeps = "model.1.conv", {}
    for name, model in (("intact", load_model(weights).model.float()), ("dead", _dead_model(weights))):
        s = Slimmer(model, ratio=0.5, round_to=8, imgsz=64, data=calib, importance="l1")
        sens = S.measure(s, shares=(0.5,), images=16, cache=tmp_path, progress=False)
        rise = next(iter(sens.rises[key].values()))
        print(f"{name}: {key} loss rise at half its channels {rise:.4f}; largest rise of any group "
              f"{max(v for per in sens.rises.values() for v in per.values()):.4f}")
        if name == "dead":
            assert abs(rise) < 1e-6
            again = S.measure(s, shares=(0.5,), images=16, cache=tmp_path, progress=False)
            assert again.rises == sens.rises and again.seconds == sens.seconds  # read back from the cache
        else:
            assert rise > 0.01
        model = copy.deepcopy(s.loaded.model).float().eval()
        rewrite_blocks(model)
        groups, graph, ties, frozen = s.structure(model)
        cost = CostModel.macs(conv_sites(model, groups, graph, 64))
        keep, _ = allocate_budget(groups, cost, 0.7 * cost.predict({}), s.rules, 8, ties, frozen, max_ratio=0.5,
                                  price=sens.price)
        g = next(g for g in groups if g.root_name == key)
        keeps[name] = keep[g.index], g.width
    print("kept of", key, keeps)
    assert keeps["dead"][0] == keeps["dead"][1] // 2 < keeps["intact"][0]


def test_sensitivity_allocation_respects_floors_ties_and_multiples(calib):
    s = Slimmer(small_model(), ratio=0.5, round_to=16, imgsz=64, data=calib, importance="l1")
    sens = S.measure(s, shares=(0.5,), images=16, cache=None, progress=False)
    assert set(sens.rises) == {u.key for u in S.units(s)}
    model = copy.deepcopy(s.loaded.model).float().eval()
    rewrite_blocks(model)
    groups, graph, ties, frozen = s.structure(model)
    cost = CostModel.macs(conv_sites(model, groups, graph, 64))
    keep, predicted = allocate_budget(groups, cost, 0.2 * cost.predict({}), s.rules, 16, ties, frozen,
                                      max_ratio=0.6, price=sens.price)
    for g in groups:
        assert keep[g.index] == g.width or keep[g.index] % 16 == 0
        assert keep[g.index] >= g.width * (1 - 0.6 * s.rules.ratio(g.kind, 1.0)) - 1e-9  # --max-ratio x rule
        if g.multiple > 1:  # attention heads read these channels
            assert keep[g.index] % g.multiple == 0
    for tie in ties:
        assert len({keep[i] for i in tie}) == 1
    assert all(keep[g.index] == g.width for g in groups if g.index in frozen)


def test_rise_curve_interpolates_and_never_falls():
    sens = S.Sensitivity(0.0, rises={"a": {48: 0.1, 32: 0.05, 16: 0.4}}, widths={"a": 64})
    assert sens.rise("a", 64) == 0 and sens.rise("a", 56) == pytest.approx(0.05)
    assert sens.rise("a", 32) == pytest.approx(0.1)  # a measured dip below a wider cut's rise is noise
    assert sens.rise("a", 8) > sens.rise("a", 16) == pytest.approx(0.4)
    assert sens.rise("unmeasured", 8) == 0


def test_sensitivity_allocation_needs_data():
    from yoloprune.slim.target import TargetSlimmer

    with pytest.raises(UserError, match="pass data"):
        TargetSlimmer("yolo26n.yaml", speedup=2.0, allocation="sensitivity")
