"""Channel surgery on Ultralytics `Conv` blocks: take, split and concatenate output channels exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _take(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.detach()[idx].clone()


def take_out_channels(conv: nn.Module, idx: torch.Tensor) -> nn.Module:
    """Return a copy of an Ultralytics `Conv` (conv + optional bn + act) keeping only output channels `idx`.

    Args:
        conv: an Ultralytics `Conv` block (or anything with `.conv` and optional `.bn`).
        idx: 1-D long tensor of output channels to keep, in order.

    Returns:
        A new block of the same class whose outputs equal `conv(x)[:, idx]`.
    """
    new = copy.deepcopy(conv)
    c, nc = conv.conv, new.conv
    nc.weight = nn.Parameter(_take(c.weight, idx), requires_grad=c.weight.requires_grad)
    if c.bias is not None:
        nc.bias = nn.Parameter(_take(c.bias, idx), requires_grad=c.bias.requires_grad)
    nc.out_channels = len(idx)
    bn = getattr(conv, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        _take_bn(bn, new.bn, idx)
    return new


def _take_bn(bn: nn.BatchNorm2d, nb: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    if bn.weight is not None:
        nb.weight = nn.Parameter(_take(bn.weight, idx), requires_grad=bn.weight.requires_grad)
        nb.bias = nn.Parameter(_take(bn.bias, idx), requires_grad=bn.bias.requires_grad)
    if bn.running_mean is not None:
        nb.running_mean = _take(bn.running_mean, idx)
        nb.running_var = _take(bn.running_var, idx)
    nb.num_features = len(idx)


def split_out_channels(conv: nn.Module, sizes: tuple[int, ...]) -> list[nn.Module]:
    """Split a `Conv` into consecutive output-channel slices of the given sizes (exact)."""
    parts, start = [], 0
    for n in sizes:
        parts.append(take_out_channels(conv, torch.arange(start, start + n)))
        start += n
    return parts


def cat_out_channels(parts: list[nn.Module]) -> nn.Module:
    """Concatenate `Conv` blocks that share their input into one block (inverse of `split_out_channels`)."""
    first = parts[0]
    total = sum(p.conv.out_channels for p in parts)
    merged = take_out_channels(first, torch.arange(first.conv.out_channels))

    def cat(get):
        return torch.cat([get(p).detach() for p in parts], 0).clone()

    c = merged.conv
    c.weight = nn.Parameter(cat(lambda p: p.conv.weight), requires_grad=first.conv.weight.requires_grad)
    if first.conv.bias is not None:
        c.bias = nn.Parameter(cat(lambda p: p.conv.bias), requires_grad=first.conv.bias.requires_grad)
    c.out_channels = total
    bn = getattr(merged, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        if bn.weight is not None:
            bn.weight = nn.Parameter(cat(lambda p: p.bn.weight), requires_grad=first.bn.weight.requires_grad)
            bn.bias = nn.Parameter(cat(lambda p: p.bn.bias), requires_grad=first.bn.bias.requires_grad)
        if bn.running_mean is not None:
            bn.running_mean = cat(lambda p: p.bn.running_mean)
            bn.running_var = cat(lambda p: p.bn.running_var)
        bn.num_features = total
    return merged
