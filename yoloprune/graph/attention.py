"""Pruning of Ultralytics `Attention` (C2PSA/PSABlock) as one unit: q/k/v kept coupled within every head.

Ultralytics' `Attention.forward` views the attended values as `(B, C, H, W)` with `C` the input width, so the value
width (`num_heads * head_dim`) must always equal the residual width around it. The dependency graph treats the
module as a leaf: pruning `n` residual channels removes `n` input columns of `qkv`, `n` output rows of `proj` and
`n / num_heads` value channels in every head (with their `pe` and `proj` columns), plus the same share of query/key
channels, paired so `q . k` stays a dot product over matching channels. Heads are never dropped, so the allocator
keeps residual widths a multiple of `num_heads`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules.block import Attention

from .convs import take_out_channels

# score(weight_rows, bn_gamma_or_None) -> one score per row; larger = more important
RowScore = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _keep(n: int, drop: Sequence[int]) -> torch.Tensor:
    drop = set(int(i) for i in drop)
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def _take_in_channels(conv: nn.Module, idx: torch.Tensor) -> None:
    c = conv.conv
    c.weight = nn.Parameter(c.weight.detach()[:, idx].clone(), requires_grad=c.weight.requires_grad)
    c.in_channels = len(idx)


def _lowest(scores: torch.Tensor, n: int) -> list[int]:
    return torch.argsort(scores, stable=True)[:n].tolist() if n > 0 else []


class AttentionPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning handler for Ultralytics `Attention`; `row_score` ranks q/k/v channels inside each head.

    Every choice of kept rows is recorded in `decisions` (keyed by the layer's name in `names`); passing a previous
    run's `decisions` as `replay` makes the same choice on a twin model (e.g. the EMA copy of a model in training).
    """

    TARGET_MODULES = Attention

    def __init__(self, row_score: RowScore, names: dict | None = None, replay: dict | None = None):
        super().__init__()
        self.row_score = row_score
        self.names = names or {}  # id(layer) -> qualified name
        self.replay = replay or {}
        self.decisions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get_out_channels(self, layer: Attention) -> int:
        return layer.proj.conv.out_channels

    def get_in_channels(self, layer: Attention) -> int:
        return layer.qkv.conv.in_channels

    def prune_in_channels(self, layer: Attention, idxs: Sequence[int]) -> Attention:
        _take_in_channels(layer.qkv, _keep(self.get_in_channels(layer), idxs))
        return layer

    def prune_out_channels(self, layer: Attention, idxs: Sequence[int]) -> Attention:
        n, nh = len(idxs), layer.num_heads
        if n % nh:
            raise ValueError(f"Attention with {nh} heads cannot lose {n} channels (not a multiple of the head count)")
        layer.proj = take_out_channels(layer.proj, _keep(self.get_out_channels(layer), idxs))
        self._prune_heads(layer, n // nh)
        return layer

    def _prune_heads(self, layer: Attention, v_drop: int) -> None:
        """Drop `v_drop` value channels per head and a matching share of query/key channels."""
        kd, hd = layer.key_dim, layer.head_dim
        new_hd = hd - v_drop
        new_kd = max(1, round(kd * new_hd / hd)) if kd else 0
        name = self.names.get(id(layer), str(id(layer)))
        rows, v_idx = self.replay[name] if name in self.replay else self._choose_rows(layer, new_kd, v_drop)
        self.decisions[name] = (rows, v_idx)
        layer.qkv = take_out_channels(layer.qkv, rows)
        layer.pe = take_out_channels(layer.pe, v_idx)
        layer.pe.conv.in_channels = layer.pe.conv.groups = len(v_idx)
        _take_in_channels(layer.proj, v_idx)
        layer.head_dim, layer.key_dim = new_hd, new_kd  # `scale` keeps its trained value

    def _choose_rows(self, layer: Attention, new_kd: int, v_drop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept qkv rows and value channels: the best-scored within every head."""
        nh, kd, hd = layer.num_heads, layer.key_dim, layer.head_dim
        per = 2 * kd + hd
        w = layer.qkv.conv.weight.detach().flatten(1)
        gamma = layer.qkv.bn.weight.detach().abs() if isinstance(getattr(layer.qkv, "bn", None), nn.BatchNorm2d) else None
        proj_w = layer.proj.conv.weight.detach().flatten(2).transpose(0, 1).flatten(1)  # (in, out*k*k)
        keep_rows, keep_v = [], []
        for h in range(nh):
            q = torch.arange(h * per, h * per + kd)
            k, v = q + kd, torch.arange(h * per + 2 * kd, h * per + per)
            v_cols = torch.arange(h * hd, (h + 1) * hd)
            v_score = self.row_score(w[v], None if gamma is None else gamma[v]) * self.row_score(proj_w[v_cols], None)
            qk_score = self.row_score(w[q], None if gamma is None else gamma[q]) * self.row_score(
                w[k], None if gamma is None else gamma[k]
            )
            kq = _keep(kd, _lowest(qk_score, kd - new_kd))
            kv = _keep(hd, _lowest(v_score, v_drop))
            keep_rows += [q[kq], k[kq], v[kv]]
            keep_v.append(v_cols[kv])
        return torch.cat(keep_rows), torch.cat(keep_v)
