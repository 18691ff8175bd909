"""Trace an Ultralytics model (already rewritten split-free) into a Torch-Pruning `DependencyGraph`."""

from __future__ import annotations

import contextlib

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules.block import Attention

from .attention import AttentionPruner
from .heads import head_handler


@contextlib.contextmanager
def _training_branches(model: nn.Module):
    """Train-mode control flow (training-only branches run) with BatchNorm statistics left untouched."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def trace_forward(model: nn.Module, im: torch.Tensor) -> list[torch.Tensor]:
    """Run the layers of an Ultralytics model like `BaseModel._predict_once`, every head branch traced undetached."""
    head = model.model[-1]
    trace_head, _ = head_handler(head) or (None, None)
    y, x = [], im
    with _training_branches(model):
        for m in model.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = trace_head(m, x) if (m is head and trace_head) else m(x)
            y.append(x)
    return x if isinstance(x, list) else [x]


def fixed_layers(model: nn.Module) -> list[nn.Module]:
    """Final prediction layers of the model's head, whose output widths must not change."""
    head = model.model[-1]
    handler = head_handler(head)
    return handler[1](head) if handler else []


def build_graph(model: nn.Module, imgsz: int, row_score, replay: dict | None = None) -> tp.DependencyGraph:
    """Trace `model` on a zero image of `imgsz` and return its dependency graph.

    Args:
        model: an Ultralytics `BaseModel` whose split blocks were rewritten by `rewrite_blocks`.
        imgsz: square trace size; any multiple of the model's largest stride works (shapes, not values, matter).
        row_score: channel scorer used inside attention heads (see `yoloprune.importance.row_scorer`).
        replay: attention row choices of an earlier cut to repeat (see `AttentionPruner`).

    The attention pruner is kept as `graph.attention` so its recorded choices can be read after the cut.
    """
    ch = input_channels(model)
    im = torch.zeros(1, ch, imgsz, imgsz, device=next(model.parameters()).device, requires_grad=True)  # frozen weights still trace
    graph = tp.DependencyGraph()
    graph.attention = AttentionPruner(row_score, {id(m): n for n, m in model.named_modules()}, replay)
    with torch.enable_grad():
        graph.build_dependency(
            model,
            example_inputs=im,
            forward_fn=trace_forward,
            customized_pruners={Attention: graph.attention},
            verbose=False,
        )
    return graph


def probe(model: nn.Module, imgsz: int | None = None):
    """Eval-mode outputs of `model` on one zero image (`imgsz` defaults to twice the largest stride), no gradient;
    the model's train/eval mode is left as it was. Shapes, not values, are what callers read."""
    imgsz = imgsz or 2 * max_stride(model)
    p = next(model.parameters())
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(torch.zeros(1, input_channels(model), imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        model.train(was)


def input_channels(model: nn.Module) -> int:
    """Channels of the model's input image (those of its first convolution)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("model has no convolution")


def max_stride(model: nn.Module) -> int:
    """The model's largest stride (at least 32): the smallest square image every layer accepts."""
    return int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
