"""The seed document's names (`ChannelPruner`, `prune_model`) as thin layers over `Slimmer`."""

from __future__ import annotations

from torch import nn

from .slim.report import SlimReport
from .slim.slimmer import Slimmer


def _rules(preserve_shortcuts: bool, config_file):
    return config_file if preserve_shortcuts else "none"


class ChannelPruner:
    """Seed-compatible channel pruner; `prune()` physically slims the given model in place.

    Args:
        model: a YOLO `BaseModel` (e.g. `YOLO(...).model`) or `YOLO` object.
        pruning_ratio: share of channels to remove, in (0, 1).
        importance_metric: `l1`, `l2`, `bn`, `lamp` or `random`.
        preserve_shortcuts: apply the shortcut rules (`config_file`); False prunes every group uniformly.
        config_file: shortcut rules name (`yolo26`) or YAML path.
        round_to: kept widths are multiples of this.

    `pruning_ratio=0.0` makes an analysis-only pruner (the seed's monitoring example): sparsity and groups work,
    `prune()` refuses.

    Example:
        >>> pruner = ChannelPruner(YOLO("yolo26n.yaml").model, pruning_ratio=0.3, importance_metric="l1")
        >>> pruner.get_model_sparsity()["channel_sparsity"]
        >>> report = pruner.prune()  # the model is now physically smaller
    """

    def __init__(self, model, pruning_ratio: float = 0.3, importance_metric: str = "l1", preserve_shortcuts: bool = True,
                 config_file="yolo26", round_to: int = 8):
        self.analysis_only = pruning_ratio == 0 and not isinstance(pruning_ratio, bool)
        self._slimmer = Slimmer(model, ratio=0.5 if self.analysis_only else pruning_ratio, importance=importance_metric,
                                rules=_rules(preserve_shortcuts, config_file), round_to=round_to)
        self.model = self._slimmer.loaded.model
        self._groups = None

    @property
    def groups(self):
        """Coupled groups with their shortcut kind and planned width (computed once)."""
        if self._groups is None:
            self._groups = self._slimmer.groups()
            if self.analysis_only:
                for g in self._groups:
                    g.keep = g.width
        return self._groups

    @property
    def shortcut_layers(self) -> list[str]:
        """Layers whose output channels take part in a shortcut (residual, csp, concat or attention group)."""
        return [name for g in self.groups if g.kind != "regular" for name in g.layers]

    def get_model_sparsity(self, threshold: float = 1e-3) -> dict:
        """Channel sparsity of the model and the share of channels the planned pruning removes.

        Returns:
            dict with `channel_sparsity` (share of prunable channels whose BatchNorm |gamma| < threshold),
            `planned_ratio` (share of prunable channels the plan removes), `channels` and `per_kind` counts.
        """
        from .monitor import bn_channel_sparsity

        total = sum(g.width for g in self.groups)
        keep = sum(g.keep for g in self.groups)
        per_kind = {}
        for g in self.groups:
            k = per_kind.setdefault(g.kind, {"channels": 0, "kept": 0})
            k["channels"] += g.width
            k["kept"] += g.keep
        return {
            "channel_sparsity": bn_channel_sparsity(self.model, threshold),
            "planned_ratio": 1 - keep / total if total else 0.0,
            "channels": total,
            "per_kind": per_kind,
        }

    def prune(self) -> SlimReport:
        """Physically slim the model in place (its layers are replaced by narrower ones); return the report."""
        if self.analysis_only:
            from .errors import UserError

            raise UserError("pruning_ratio=0 makes an analysis-only ChannelPruner; pass a ratio in (0, 1) to prune")
        slim = self._slimmer.slim()
        self.model.model = slim.model
        self._groups = None
        return self._slimmer.report


def prune_model(model, pruning_ratio: float = 0.3, importance_metric: str = "l1", preserve_shortcuts: bool = True,
                config_file="yolo26", round_to: int = 8) -> nn.Module:
    """Return a physically slim copy of `model` (a YOLO checkpoint path, YAML, `YOLO` or `BaseModel`)."""
    return Slimmer(model, ratio=pruning_ratio, importance=importance_metric,
                   rules=_rules(preserve_shortcuts, config_file), round_to=round_to).slim()
