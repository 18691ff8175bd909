"""Coupled channel groups of a traced model, each classified from the graph by the shortcuts it takes part in.

A group is a set of channels that must be cut together (Torch-Pruning's `Group`). Its shortcut kinds come from the
operations the group's channels pass through in the traced graph:

- `attention`: an `Attention` module reads and writes the channels;
- `residual`: an element-wise addition merges two paths carrying the channels (Bottleneck, PSABlock, SPPF shortcut);
- `csp`: a concatenation whose inputs come from two or more layers inside one block (split-transform-merge);
- `concat`: a concatenation whose inputs come from different blocks of the network (feature fusion in the neck);
- `regular`: none of the above.

Block ownership is read from the names of the modules next to each concatenation in the graph (`model.<i>.`), so the
decision follows the graph's edges, not a list of module names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from ultralytics.nn.modules.block import Attention

KINDS = ("attention", "residual", "csp", "concat", "regular")
_LAYER = re.compile(r"^model\.(\d+)\.")


@dataclass
class CoupledGroup:
    """One prunable group: its channels, the layers they live in and its shortcut classification."""

    index: int
    root: nn.Module
    root_name: str
    width: int
    kinds: set[str]
    kind: str = "regular"
    multiple: int = 1  # widths must stay multiples of this (attention head count)
    keep: int | None = None  # planned width, once allocated
    layers: list[str] = field(default_factory=list)  # modules whose output channels the group cuts
    tp_group: object = None

    @property
    def stage(self) -> str:
        """Top-level model layer of the root (`'13'`), or the root name when it has none."""
        m = _LAYER.match(self.root_name)
        return m.group(1) if m else self.root_name


def _named(graph: tp.DependencyGraph, node) -> str | None:
    return graph._module2name.get(node.module)


def _neighbour_layers(graph, node, direction: str) -> tuple[set[str], set[str]]:
    """Top-level layers and module names of the nearest named modules from `node` along `direction`."""
    layers, names, seen = set(), set(), set()
    stack = list(getattr(node, direction))
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        name = _named(graph, n)
        if name is None:
            stack.extend(getattr(n, direction))
            continue
        names.add(name.rsplit(".", 1)[0] if name.endswith((".conv", ".bn")) else name)
        m = _LAYER.match(name)
        layers.add(m.group(1) if m else name)
    return layers, names


def _concat_kind(graph, node) -> str | None:
    in_layers, producers = _neighbour_layers(graph, node, "inputs")
    out_layers, _ = _neighbour_layers(graph, node, "outputs")
    if len(in_layers | out_layers) > 1:
        return "concat"
    return "csp" if len(producers) > 1 else None


def classify(graph: tp.DependencyGraph, group) -> tuple[set[str], int]:
    """Return the shortcut kinds a group takes part in and the head-count multiple its width must respect."""
    kinds, multiple = set(), 1
    for item in group:
        node = item.dep.target
        if isinstance(node.module, Attention):
            kinds.add("attention")
            multiple = math.lcm(multiple, node.module.num_heads)
        elif node.type == ops.OPTYPE.ELEMENTWISE and node.grad_fn is not None:
            if node.grad_fn.name().startswith("AddBackward") and len(node.inputs) >= 2:
                kinds.add("residual")
        elif node.type == ops.OPTYPE.CONCAT and (k := _concat_kind(graph, node)):
            kinds.add(k)
    return kinds or {"regular"}, multiple


def coupled_groups(graph: tp.DependencyGraph, fixed: list[nn.Module]) -> list[CoupledGroup]:
    """All prunable groups of `graph` (groups that would change a fixed layer's outputs are left out), in order."""
    out = []
    for g in graph.get_all_groups(ignored_layers=list(fixed), root_module_types=(nn.Conv2d, nn.Linear)):
        root = g[0].dep.target.module
        kinds, multiple = classify(graph, g)
        layers = [
            graph._module2name.get(it.dep.target.module, "?")
            for it in g
            if graph.is_out_channel_pruning_fn(it.dep.handler) and isinstance(it.dep.target.module, (nn.Conv2d, nn.Linear))
        ]
        out.append(
            CoupledGroup(
                index=len(out),
                root=root,
                root_name=graph._module2name.get(root, "?"),
                width=len(g[0].idxs),
                kinds=kinds,
                multiple=multiple,
                layers=layers,
                tp_group=g,
            )
        )
    return out
