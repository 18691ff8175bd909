"""The seed document's API names work and physically slim."""

from ultralytics import YOLO

from yoloprune import ChannelPruner, prune_model


def test_channel_pruner_prunes_in_place():
    yolo = YOLO("yolo26n.yaml")
    before = sum(p.numel() for p in yolo.model.parameters())
    pruner = ChannelPruner(yolo.model, pruning_ratio=0.3, importance_metric="l1", preserve_shortcuts=True,
                           config_file="yolo26")
    s = pruner.get_model_sparsity()
    assert 0.0 <= s["channel_sparsity"] <= 1.0 and 0.0 < s["planned_ratio"] < 0.3
    assert pruner.shortcut_layers and all(isinstance(n, str) for n in pruner.shortcut_layers)
    report = pruner.prune()
    after = sum(p.numel() for p in yolo.model.parameters())
    assert after < before and report.after["params"] == after


def test_uniform_when_shortcuts_not_preserved():
    pruner = ChannelPruner(YOLO("yolo26n.yaml").model, pruning_ratio=0.3, preserve_shortcuts=False)
    assert abs(pruner.get_model_sparsity()["planned_ratio"] - 0.3) < 0.05


def test_prune_model_returns_slim_copy():
    base = YOLO("yolo11n.yaml").model
    slim = prune_model(base, pruning_ratio=0.3)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in base.parameters())


def test_seed_monitoring_example_with_ratio_zero():
    """The seed's monitoring snippet: `ChannelPruner(model, pruning_ratio=0.0).get_model_sparsity()`."""
    from ultralytics import YOLO

    from yoloprune import ChannelPruner, UserError
    from yoloprune.train import L1Regularizer

    model = YOLO("yolo26n.yaml")
    assert 0 <= L1Regularizer().get_sparsity(model.model)["overall_sparsity"] < 0.1
    pruner = ChannelPruner(model.model, pruning_ratio=0.0)
    s = pruner.get_model_sparsity()
    assert s["channel_sparsity"] == 0.0 and s["planned_ratio"] == 0.0
    import pytest

    with pytest.raises(UserError):
        pruner.prune()
