"""Sparsity figures of any model: how many channels are already near zero."""

from __future__ import annotations

from torch import nn


def bn_channel_sparsity(model: nn.Module, threshold: float = 1e-3) -> float:
    """Share of BatchNorm channels whose |gamma| is below `threshold` (0.0 for a model without BatchNorm)."""
    total = small = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            total += m.weight.numel()
            small += int((m.weight.detach().abs() < threshold).sum())
    return small / total if total else 0.0
