"""Sparsity figures of any model: how many channels are already near zero."""

from __future__ import annotations

from torch import nn

from .train.regularize import gamma_values


def bn_channel_sparsity(model: nn.Module, threshold: float = 1e-3) -> float:
    """Share of BatchNorm channels whose |gamma| is below `threshold` (0.0 for a model without BatchNorm)."""
    g = gamma_values(model)
    return (g < threshold).float().mean().item() if g.numel() else 0.0
