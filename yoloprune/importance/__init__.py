"""Channel importance: registered scorers that rank the channels of a coupled group (higher = keep).

Every scorer reduces over all layers of a group (the convolutions whose outputs and inputs carry the channels), so a
channel is judged by everything that would be cut with it. Scores are deterministic: `random` draws from a generator
seeded by the group's root layer name.
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch
import torch_pruning as tp

from ..errors import UserError, close_match

__all__ = ["IMPORTANCES", "get_importance", "row_scorer"]


class _Magnitude:
    """Group Lp norm of weights (`tp.importance.GroupMagnitudeImportance`, mean over layers, mean-normalised)."""

    def __init__(self, p: int):
        self._imp = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer="mean")

    def __call__(self, group, root_name: str) -> torch.Tensor:
        return self._imp(group)


class _BatchNorm:
    """|gamma| of the BatchNorm layers in the group (Network Slimming); groups without BatchNorm fall back to L1."""

    def __init__(self):
        self._imp = tp.importance.BNScaleImportance(group_reduction="mean", normalizer="mean")
        self._fallback = _Magnitude(1)

    def __call__(self, group, root_name: str) -> torch.Tensor:
        s = self._imp(group)
        return self._fallback(group, root_name) if s is None else s


class _Lamp:
    """LAMP scores (layer-adaptive magnitude, Lee et al. 2021) over the group's L2 norms."""

    def __init__(self):
        self._imp = tp.importance.LAMPImportance(p=2, group_reduction="mean")

    def __call__(self, group, root_name: str) -> torch.Tensor:
        return self._imp(group)


class _Random:
    """Uniform random scores, reproducible: seeded from the group's root layer name."""

    def __call__(self, group, root_name: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(root_name.encode()))
        return torch.rand(len(group[0].idxs), generator=g)


IMPORTANCES: dict[str, Callable[[], Callable]] = {
    "l1": lambda: _Magnitude(1),
    "l2": lambda: _Magnitude(2),
    "bn": _BatchNorm,
    "lamp": _Lamp,
    "random": _Random,
}


def get_importance(name: str) -> Callable:
    """Return the group scorer registered as `name` (`l1`, `l2`, `bn`, `lamp`, `random`).

    Raises:
        UserError: for an unknown name, suggesting the closest one.
    """
    if name not in IMPORTANCES:
        raise UserError(f"unknown importance '{name}'{close_match(name, IMPORTANCES)}; choose one of {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name]()


def row_scorer(name: str) -> Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]:
    """Per-row scorer used inside attention heads, consistent with the group scorer `name`."""
    if name == "bn":
        return lambda rows, gamma: gamma if gamma is not None else rows.abs().sum(1)
    if name == "random":
        return lambda rows, gamma: torch.rand(len(rows), generator=torch.Generator().manual_seed(len(rows)))
    p = 1 if name == "l1" else 2
    return lambda rows, gamma: rows.norm(p=p, dim=1)
