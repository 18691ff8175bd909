"""Sparsity penalties (L1 on conv weights; group L1 per output channel + BatchNorm-gamma L1) and sparsity figures.

Each regularizer is a callable `regularizer(model) -> loss tensor` (differentiable, for custom loops) and can add the
same penalty's gradient straight to `.grad` (`add_grad_`), which is how the yoloprune trainer applies it: once per
optimizer step, after the data loss's backward, so AMP loss scaling, gradient accumulation and DDP averaging leave
its weight unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _conv_weights(model: nn.Module, trainable: bool = False):
    """(weight, whether its output channels are dim 1) of every conv (only trainable ones if asked)."""
    for m in model.modules():
        if isinstance(m, CONVS) and (m.weight.requires_grad or not trainable):
            yield m.weight, isinstance(m, nn.ConvTranspose2d)


def _bn_gammas(model: nn.Module, trainable: bool = False):
    for m in model.modules():
        if isinstance(m, NORMS) and m.weight is not None and (m.weight.requires_grad or not trainable):
            yield m.weight


def gamma_values(model: nn.Module) -> torch.Tensor:
    """|gamma| of every BatchNorm channel of `model`, in one flat tensor (empty without BatchNorm)."""
    gammas = [m.weight.detach().float().abs().flatten() for m in model.modules() if isinstance(m, NORMS) and m.weight is not None]
    return torch.cat(gammas) if gammas else torch.zeros(0)


def get_sparsity(model: nn.Module, threshold: float = 1e-3) -> dict:
    """Weight, channel and BatchNorm-gamma sparsity of `model` (every conv and BatchNorm, frozen ones included).

    Returns:
        dict with `overall_sparsity` (share of conv weights with |w| < threshold), `channel_sparsity` (share of conv
        output channels whose weights are all below it), `bn_sparsity` (share of BatchNorm gammas below it),
        `bn_gamma` (count, mean, median, min, max and Hoyer sparsity of |gamma|), `layers` (per conv: params, sparsity,
        channel_sparsity) and `threshold`.

    Example:
        >>> get_sparsity(YOLO("best.pt").model)["overall_sparsity"]
    """
    layers, zeros, total, dead, channels = {}, 0, 0, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, CONVS):
            w = m.weight.detach().float()
            small = w.abs() < threshold
            per_channel = small.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else small
            dead_ch = int(per_channel.flatten(1).all(1).sum())
            layers[name] = {"params": w.numel(), "sparsity": small.float().mean().item(),
                            "channel_sparsity": dead_ch / per_channel.shape[0]}
            zeros, total = zeros + int(small.sum()), total + w.numel()
            dead, channels = dead + dead_ch, channels + per_channel.shape[0]
    g = gamma_values(model)
    stats = {"count": g.numel()}
    if g.numel():
        stats.update(mean=g.mean().item(), median=g.median().item(), min=g.min().item(), max=g.max().item(),
                     hoyer=hoyer(g))
    return {
        "overall_sparsity": zeros / total if total else 0.0,
        "channel_sparsity": dead / channels if channels else 0.0,
        "bn_sparsity": (g < threshold).float().mean().item() if g.numel() else 0.0,
        "bn_gamma": stats,
        "layers": layers,
        "threshold": threshold,
    }


def hoyer(x: torch.Tensor) -> float:
    """Hoyer's sparsity of a vector, in [0, 1]: 0 when all |x| are equal, 1 when one entry holds all the mass.

    Unlike a threshold count it moves as soon as an L1 penalty starts separating small values from large ones.
    """
    x = x.detach().float().abs().flatten()
    n, l2 = x.numel(), x.norm()
    if n < 2 or l2 == 0:
        return 0.0
    return max(0.0, ((n**0.5 - x.sum() / l2) / (n**0.5 - 1)).item())


class L1Regularizer:
    """Unstructured L1 on conv weights: `lambda_l1 * sum(|w|)`.

    Args:
        lambda_l1: penalty weight, in the units of Ultralytics' per-image loss (default 1e-5).

    Example:
        >>> reg = L1Regularizer(1e-5)
        >>> loss = reg(model)  # differentiable tensor
        >>> reg.get_sparsity(model)["overall_sparsity"]
    """

    def __init__(self, lambda_l1: float = 1e-5):
        if lambda_l1 < 0:
            raise ValueError(f"lambda_l1 must be >= 0, got {lambda_l1}")
        self.lambda_l1 = float(lambda_l1)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [w.abs().sum() for w, _ in _conv_weights(model)]
        return self.lambda_l1 * torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def add_grad_(self, model: nn.Module, scale: float = 1.0) -> None:
        """Add `scale` times the penalty's (sub)gradient to every `.grad`, as if `scale * self(model)` were backpropagated."""
        if self.lambda_l1:
            for w, _ in _conv_weights(model, trainable=True):
                _add(w, torch.sign(w), scale * self.lambda_l1)

    @staticmethod
    def get_sparsity(model: nn.Module, threshold: float = 1e-3) -> dict:
        """See `yoloprune.train.regularize.get_sparsity`."""
        return get_sparsity(model, threshold)


class StructuredL1Regularizer(L1Regularizer):
    """Group L1 per conv output channel (`lambda_l1 * sum_c ||W_c||_2`) plus L1 on BatchNorm gamma (`lambda_bn`).

    The channel term drives whole filters to zero; the gamma term is Network Slimming's (Liu et al., 2017): channels
    whose gamma falls to zero are the ones channel pruning (`importance_metric=bn`) removes first.

    Args:
        lambda_l1: weight of the group penalty on conv output channels (default 1e-5).
        lambda_bn: weight of the BatchNorm-gamma penalty (default 1e-4).
    """

    def __init__(self, lambda_l1: float = 1e-5, lambda_bn: float = 1e-4):
        super().__init__(lambda_l1)
        if lambda_bn < 0:
            raise ValueError(f"lambda_bn must be >= 0, got {lambda_bn}")
        self.lambda_bn = float(lambda_bn)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [self.lambda_l1 * _rows(w, t).norm(dim=1).sum() for w, t in _conv_weights(model)]
        terms += [self.lambda_bn * g.abs().sum() for g in _bn_gammas(model)]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def add_grad_(self, model: nn.Module, scale: float = 1.0) -> None:
        if self.lambda_l1:
            for w, t in _conv_weights(model, trainable=True):
                rows = _rows(w, t)
                norm = rows.norm(dim=1, keepdim=True)
                unit = torch.where(norm > 0, rows / norm.clamp_min(1e-12), torch.zeros_like(rows))
                _add(w, _unrows(unit, w, t), scale * self.lambda_l1)
        if self.lambda_bn:
            for g in _bn_gammas(model, trainable=True):
                _add(g, torch.sign(g), scale * self.lambda_bn)


def _rows(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """One row per output channel."""
    return (w.transpose(0, 1) if transposed else w).flatten(1)


def _unrows(rows: torch.Tensor, like: torch.Tensor, transposed: bool) -> torch.Tensor:
    if transposed:
        return rows.reshape(like.shape[1], like.shape[0], *like.shape[2:]).transpose(0, 1)
    return rows.reshape(like.shape)


def _add(p: torch.Tensor, direction: torch.Tensor, scale: float) -> None:
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    p.grad.add_(direction.to(p.grad.dtype), alpha=scale)


def build_regularizer(cfg) -> L1Regularizer | None:
    """The regularizer a `SparsityConfig` asks for, or None."""
    if not cfg.enabled:
        return None
    if cfg.structured_l1:
        return StructuredL1Regularizer(cfg.lambda_l1, cfg.lambda_bn)
    return L1Regularizer(cfg.lambda_l1)
