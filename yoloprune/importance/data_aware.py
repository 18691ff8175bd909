"""Data-aware channel importance: how much the detection loss depends on each channel of a coupled group.

Both scorers run the calibration batches through the uncut model (training mode, Ultralytics' own detection loss)
and read the gradients; both reduce over *every* layer of a coupled group (the convolutions that write the channels,
their BatchNorm, the convolutions that read them), so a channel is judged by everything that goes with it.

- `taylor`: first-order Taylor estimate of the loss change when a channel is removed (Molchanov et al., CVPR 2019):
  per batch, the sum of `weight x gradient` over every parameter of the channel in the group, squared, averaged over
  the batches.
- `fisher`: the diagonal Fisher / Optimal Brain Damage saliency: per batch, the sum of `(weight x gradient)^2` over
  the channel's parameters (a second-order estimate with the Hessian's diagonal taken as the squared gradient),
  averaged over the batches.

Attention heads are cut inside by their own pruner (`graph/attention.py`), which ranks rows by weight norms for
every scorer.
"""

from __future__ import annotations

import torch
from torch import nn

DATA_AWARE = ("taylor", "fisher")


def _contribution(graph, item) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Signed `sum(w * g)` and `sum((w * g)^2)` per channel of one group item (indexed like `item.idxs`)."""
    m = item.dep.target.module
    out = graph.is_out_channel_pruning_fn(item.dep.handler)
    parts = []
    if isinstance(m, nn.Conv2d):
        if m.weight.grad is None:
            return None
        wg = m.weight.detach() * m.weight.grad
        depthwise = m.groups == m.in_channels and m.groups > 1
        if out or depthwise:
            parts.append(wg.flatten(1))
            if m.bias is not None and m.bias.grad is not None:
                parts.append((m.bias.detach() * m.bias.grad)[:, None])
        else:
            per_in = wg.transpose(0, 1).flatten(1)
            if m.groups > 1:
                per_in = per_in.repeat(m.groups, 1)
            parts.append(per_in)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        if not m.affine or m.weight.grad is None:
            return None
        parts.append((m.weight.detach() * m.weight.grad)[:, None])
        parts.append((m.bias.detach() * m.bias.grad)[:, None])
    elif isinstance(m, nn.Linear):
        if m.weight.grad is None:
            return None
        wg = m.weight.detach() * m.weight.grad
        parts.append(wg.flatten(1) if out else wg.t())
        if out and m.bias is not None and m.bias.grad is not None:
            parts.append((m.bias.detach() * m.bias.grad)[:, None])
    else:
        return None
    per = torch.cat(parts, 1)
    idxs = torch.as_tensor(item.idxs, dtype=torch.long)
    if len(per) <= int(idxs.max()):
        return None
    return per.sum(1)[idxs], per.pow(2).sum(1)[idxs]


def _group_contribution(graph, group) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(group[0].idxs)
    first, second = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for item in group:
        root_idxs = item.root_idxs
        if root_idxs is None or any(r is None for r in root_idxs):
            continue
        c = _contribution(graph, item)
        if c is None:
            continue
        at = torch.as_tensor(root_idxs, dtype=torch.long)
        first.scatter_add_(0, at, c[0].double().cpu())
        second.scatter_add_(0, at, c[1].double().cpu())
    return first, second


def gradient_scores(model: nn.Module, graph, groups: list, batches: list[dict], progress: bool = False
                    ) -> dict[str, dict[int, torch.Tensor]]:
    """Score every channel of every group with each data-aware scorer, from the loss on `batches`.

    Args:
        model: the split-free (rewritten) uncut model the groups were traced on; its gradients are cleared after.
        graph, groups: its dependency graph and coupled groups (`CoupledGroup.tp_group`).
        batches: calibration batches (Ultralytics' batch format, images in [0, 1]).

    Returns:
        `{"taylor": {group index: scores}, "fisher": {...}}`, higher = keep.
    """
    from ..calibrate.bn import frozen_statistics, loss_ready
    from ..calibrate.data import on_device

    device = next(model.parameters()).device
    taylor = {g.index: torch.zeros(g.width, dtype=torch.float64) for g in groups}
    fisher = {g.index: torch.zeros(g.width, dtype=torch.float64) for g in groups}
    grads = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(p.dtype.is_floating_point)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(batches, desc="gradient scores", unit="batch", leave=False)
    try:
        with loss_ready(model), frozen_statistics(model), torch.enable_grad():
            for b in bar if bar is not None else batches:
                model.zero_grad(set_to_none=True)
                loss, _ = model.loss(on_device(b, device))
                loss.sum().backward()
                for g in groups:
                    first, second = _group_contribution(graph, g.tp_group)
                    taylor[g.index] += first.pow(2)
                    fisher[g.index] += second
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in grads.items():
            p.requires_grad_(r)
    n = max(len(batches), 1)
    return {"taylor": {i: (v / n).float() for i, v in taylor.items()},
            "fisher": {i: (v / n).float() for i, v in fisher.items()}}
