"""Shortcut rules: built-in and user files, validation, and that they change how much each kind is cut."""

import pytest
import torch
from ultralytics import YOLO

from yoloprune import Slimmer, UserError
from yoloprune.graph.groups import KINDS
from yoloprune.shortcut_rules import load_rules


def test_builtin_yolo26_has_seed_multipliers():
    r = load_rules("yolo26")
    assert r.multipliers == {"residual": 0.5, "csp": 0.7, "concat": 0.6, "attention": 0.75, "regular": 1.0}
    assert load_rules("none").uniform


def test_user_rules_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("multipliers:\n  residual: 0.2\n  regular: 1.0\npriority: [residual, attention, concat, csp, regular]\n")
    r = load_rules(str(f))
    assert r.multipliers["residual"] == 0.2 and r.multipliers["csp"] == 1.0 and r.priority[0] == "residual"


@pytest.mark.parametrize("text, message", [
    ("multiplier:\n  residual: 0.5\n", "'multipliers' key"),
    ("multipliers:\n  residual: 0.5\nprioirty: []\n", "unknown key 'prioirty' (did you mean 'priority'?)"),
    ("multipliers:\n  concats: 0.5\n", "unknown kind 'concats' (did you mean 'concat'?)"),
    ("multipliers:\n  csp: -1\n", "multipliers.csp"),
    ("multipliers:\n  csp: fast\n", "multipliers.csp"),
    ("multipliers: {csp: 0.5}\npriority: [csp]\n", "'priority' must list each kind once"),
    ("multipliers: [\n", "not readable YAML"),
])
def test_invalid_rules_name_the_bad_key(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=None) as e:
        load_rules(str(f))
    assert message in str(e.value)


def test_rules_cut_shortcut_groups_less_than_regular():
    base = YOLO("yolo26n.yaml").model
    report = Slimmer(base, ratio=0.4, rules="yolo26").plan()
    kinds = report.kind_summary()
    print({k: v["cut"] for k, v in kinds.items()})
    assert set(kinds) == set(KINDS), "yolo26n has groups of every kind"
    for kind in ("residual", "csp", "concat", "attention"):
        assert kinds[kind]["cut"] < kinds["regular"]["cut"], kind
    asked = {r.kind: r.ratio for r in report.groups}
    assert asked == {"residual": 0.2, "csp": 0.28, "concat": 0.24, "attention": 0.3, "regular": 0.4}


def test_rules_none_cuts_every_group_at_the_same_ratio():
    report = Slimmer(YOLO("yolo26n.yaml").model, ratio=0.4, rules="none").plan()
    assert {r.ratio for r in report.groups} == {0.4}
    uniform = Slimmer(YOLO("yolo26n.yaml").model, ratio=0.4, rules="none").plan().after["params"]
    ruled = Slimmer(YOLO("yolo26n.yaml").model, ratio=0.4, rules="yolo26").plan().after["params"]
    assert uniform < ruled  # uniform pruning at equal ratio removes more


def test_attention_is_cut_within_heads():
    """C2PSA attention loses channels in every head equally; q/k stay paired; the stock forward still runs."""
    from ultralytics.nn.modules.block import Attention

    slim = Slimmer("yolo26n.yaml", ratio=0.5, rules="none").slim().eval()
    attns = [m for m in slim.modules() if isinstance(m, Attention)]
    assert attns
    for a in attns:
        c = a.qkv.conv.in_channels
        assert a.num_heads * a.head_dim == c == a.proj.conv.out_channels == a.pe.conv.out_channels
        assert a.qkv.conv.out_channels == a.num_heads * (2 * a.key_dim + a.head_dim)
        assert a.head_dim < 64  # yolo26n heads start at 64 value channels
        with torch.no_grad():
            assert a(torch.rand(1, c, 4, 4)).shape == (1, c, 4, 4)
