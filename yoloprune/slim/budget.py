"""Budget allocation: per-group widths that meet a cost budget (measured latency or MACs) at the least loss.

Rule (documented in the README): every group starts at full width; each step removes one multiple of `round_to`
channels from the group (or set of tied groups) that saves the most cost per multiply-accumulate removed (the
model's capacity), the MACs weighted by the group's shortcut rule (`weight = 1 / multiplier`: a residual group at
0.5 counts its MACs double). With MACs as the cost itself, a step is priced by the share of the group's width it
removes instead (the log of old / new width, weighted alike), which spreads the cut as the rules say.
A group never loses more than `max_ratio x multiplier` of its channels. Steps stop when the predicted cost reaches
the budget. A fitted latency model can see no saving at all in cutting some layers (their fitted cost is constant),
though cutting them does save time; once no step the model sees a saving in is left and the budget is still unmet,
steps go on by MACs (the least loss per MAC removed first), each counted at the model's average cost per MAC, so the
deepest cut reaches every floor and a measured correction of the budget moves it smoothly. If no step is left, the
budget is out of reach and the cheapest model found is returned.

Costs are predicted per layer by a `CostModel` (`yoloprune.deploy.latency`): each convolution's cost is a function
of its input and output widths, and the other operations of a layer scale with the layer's output activations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from torch import nn
from ultralytics.nn.modules.block import Attention

from ..graph.groups import CoupledGroup
from ..shortcut_rules import ShortcutRules

_SPLIT = re.compile(r"\.cv1[ab](?=\.|$)")
_LAYER = re.compile(r"^(model\.\d+)")


def stock_name(name: str) -> str:
    """Module name in the stock (folded) model of a module of the split-free form (`cv1a`/`cv1b` -> `cv1`)."""
    return _SPLIT.sub(".cv1", name)


def layer_of(name: str) -> str:
    """Top-level layer of a module name (`model.6`), or '' for none."""
    m = _LAYER.match(name)
    return m.group(1) if m else ""


@dataclass
class ConvSite:
    """One convolution (or linear layer) of the stock model: base shape and how group cuts change it."""

    name: str
    cin: int
    cout: int
    k: int  # kernel area
    hw: int  # output pixels at the planning size
    depthwise: bool
    groups: int = 1
    cin_per_cut: dict[int, float] = field(default_factory=dict)  # group index -> input channels lost per channel cut
    cout_per_cut: dict[int, float] = field(default_factory=dict)  # group index -> output channels lost per channel cut

    def widths(self, drop: dict[int, int]) -> tuple[float, float]:
        cin = self.cin - sum(drop.get(g, 0) * r for g, r in self.cin_per_cut.items())
        cout = self.cout - sum(drop.get(g, 0) * r for g, r in self.cout_per_cut.items())
        return max(cin, 1.0), max(cout, 1.0)

    def features(self, cin: float, cout: float) -> tuple[float, float, float]:
        """`(cin * cout, cin + cout, 1)` relative to the base widths (`cout` alone for a depthwise convolution)."""
        x1 = cout / self.cout if self.depthwise else (cin * cout) / (self.cin * self.cout)
        return x1, (cin + cout) / (self.cin + self.cout), 1.0

    def macs(self, cin: float, cout: float) -> float:
        return (cout if self.depthwise else cin * cout / self.groups) * self.k * self.hw


def conv_sites(model: nn.Module, groups: list[CoupledGroup], graph, imgsz: int) -> dict[str, ConvSite]:
    """Stock convolutions of a split-free model traced into `graph`, with the channels each group's cut removes."""
    hw = {}
    hooks = [m.register_forward_hook(lambda m, i, o: hw.__setitem__(m, o[0, 0].numel() if o.dim() == 4 else 1))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    from ..graph.trace import probe

    try:
        probe(model, imgsz)
    finally:
        for h in hooks:
            h.remove()
    sites: dict[str, ConvSite] = {}
    names = {}
    for name, m in model.named_modules():
        if m not in hw:
            continue
        names[m] = name
        key = stock_name(name)
        conv = isinstance(m, nn.Conv2d)
        cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        k = math.prod(m.kernel_size) if conv else 1
        g = m.groups if conv else 1
        if key in sites:  # second half of a split convolution: same input, more outputs
            sites[key].cout += cout
        else:
            sites[key] = ConvSite(key, cin, cout, k, hw[m], depthwise=conv and g == cin and g > 1, groups=g)
    shares = {m: ({}, {}) for m in names}  # per module: group -> (input, output) channels lost per channel cut
    for grp in groups:
        for item in grp.tp_group:
            m = item.dep.target.module
            share = len(item.idxs) / grp.width
            if isinstance(m, Attention):  # cut inside by its own pruner: every projection shrinks with the width
                dim = m.qkv.conv.in_channels
                for conv in m.modules():
                    if conv in shares:
                        shares[conv][0][grp.index] = conv.in_channels / dim * share
                        shares[conv][1][grp.index] = conv.out_channels / dim * share
            elif m in shares:
                side = shares[m][1] if graph.is_out_channel_pruning_fn(item.dep.handler) else shares[m][0]
                side[grp.index] = side.get(grp.index, 0.0) + share
    for m, (cin, cout) in shares.items():
        site = sites[stock_name(names[m])]
        for g, v in cin.items():  # halves of a split convolution read the same input: count it once
            site.cin_per_cut[g] = max(site.cin_per_cut.get(g, 0.0), v)
        for g, v in cout.items():
            site.cout_per_cut[g] = site.cout_per_cut.get(g, 0.0) + v
    for s in sites.values():
        if s.depthwise:  # a depthwise convolution loses inputs with its outputs
            s.cin_per_cut = dict(s.cout_per_cut)
    return sites


class CostModel:
    """Predicted cost of a model from its convolution widths: `sum(conv costs) + sum(layer rest) + global rest`.

    Each convolution costs `a * (cin * cout) + b * (cin + cout) + c` in units of its base values (for a depthwise
    one, `cin * cout` is replaced by `cout`); the rest of a layer (activations, concatenations, attention products,
    layout changes) costs `d * f + e`, `f` being the layer's output activations relative to the base.
    """

    def __init__(self, sites: dict[str, ConvSite], conv: dict[str, tuple[float, float, float]],
                 rest: dict[str, tuple[float, float]], unit: str):
        self.sites, self.conv, self.rest, self.unit = sites, conv, rest, unit
        self.layer_act = {}
        for s in sites.values():
            self.layer_act[layer_of(s.name)] = self.layer_act.get(layer_of(s.name), 0.0) + s.cout * s.hw

    @classmethod
    def macs(cls, sites: dict[str, ConvSite]) -> "CostModel":
        """Multiply-accumulates of every convolution and linear layer (no rest)."""
        conv = {}
        for s in sites.values():
            conv[s.name] = (s.macs(s.cin, s.cout), 0.0, 0.0)
        return cls(sites, conv, {}, "MACs")

    def conv_cost(self, site: ConvSite, cin: float, cout: float) -> float:
        coef = self.conv.get(site.name, (0.0, 0.0, 0.0))
        return sum(k * x for k, x in zip(coef, site.features(cin, cout)))

    def activation_shares(self, cout_of) -> dict[str, float]:
        """Each layer's output activations relative to the base, with the output widths `cout_of(site)`; key ''
        (unless a layer has that name) holds the whole model's."""
        act = {}
        for s in self.sites.values():
            act[layer_of(s.name)] = act.get(layer_of(s.name), 0.0) + cout_of(s) * s.hw
        shares = {layer: act.get(layer, 0.0) / base for layer, base in self.layer_act.items()}
        shares.setdefault("", sum(act.values()) / max(sum(self.layer_act.values()), 1.0))
        return shares

    def predict(self, drop: dict[int, int]) -> float:
        total = sum(self.conv_cost(s, *s.widths(drop)) for s in self.sites.values())
        shares = self.activation_shares(lambda s: s.widths(drop)[1])
        return total + sum(d * shares.get(layer, shares[""]) + e for layer, (d, e) in self.rest.items())


def cut_units(groups: list[CoupledGroup], ties: list[list[int]], frozen: set[int]) -> list[list[int]]:
    """Group indices cut together to one width: each tie (unless frozen), then every other group that may be cut."""
    tied = {i for t in ties for i in t}
    return [t for t in ties if not set(t) & frozen] + [[g.index] for g in groups if g.index not in tied | frozen]


def allocate_budget(groups: list[CoupledGroup], cost: CostModel, budget: float, rules: ShortcutRules, round_to: int,
                    ties: list[list[int]], frozen: set[int], max_ratio: float = 0.75, loss: str = "macs",
                    price=None) -> tuple[dict[int, int], float]:
    """Greedy widths for `cost.predict(...) <= budget` (see the module docstring). Returns (keep per group, cost).

    `loss` prices a step: `macs` (the MACs it removes, for a latency budget) or `share` (the log of the share of
    the group's width it removes, for a MAC budget, where MACs would price every step alike). `price(groups, width,
    step)`, when given, prices it instead (e.g. the measured loss rise of cutting those tied groups from `width` to
    `width - step` channels; see `yoloprune.slim.sensitivity`), the rules then only setting each group's floor.
    """
    by_index = {g.index: g for g in groups}
    units = cut_units(groups, ties, frozen)
    drop = {g.index: 0 for g in groups}
    steps, floor, weight = {}, {}, {}
    for u in units:
        gs = [by_index[i] for i in u]
        step = math.lcm(round_to, *(g.multiple for g in gs))
        width = min(g.width for g in gs)
        mult = min(rules.ratio(g.kind, 1.0) for g in gs)
        lowest = math.ceil(width * (1 - min(max_ratio * mult, 1.0)) / step) * step
        steps[u[0]], floor[u[0]] = step, max(step, lowest)
        weight[u[0]] = max(1.0 / max(rules.ratio(g.kind, 1.0), 1e-3) for g in gs)
    touches = _touches(cost, units)
    macs = CostModel.macs(cost.sites)
    total_macs = macs.predict({})
    rate = cost.predict({}) / max(total_macs, 1e-12)  # the model's average cost per MAC

    def pick(gain_of):
        """The unit whose next step saves the most `gain_of(unit, step)` per loss, with that saving."""
        best, best_score, best_gain = None, 0.0, 0.0
        for u in units:
            width = min(by_index[i].width for i in u) - drop[u[0]]
            step = steps[u[0]]
            if width - step < floor[u[0]]:  # also every group whose rule multiplier is 0
                continue
            gain = gain_of(u, step)
            if gain <= 0:
                continue
            if price is not None:
                p = max(price([by_index[i] for i in u], width, step), 1e-9)
            elif loss == "share":
                p = weight[u[0]] * math.log(width / (width - step))
            else:
                p = weight[u[0]] * (_delta(macs, touches[u[0]], drop, u, step) / total_macs + 1e-6)
            if gain / p > best_score:
                best, best_score, best_gain = u, gain / p, gain
        return best, best_gain

    unseen = 0.0  # savings of the steps the model could not see, estimated
    current = cost.predict(drop)
    while current > budget:
        best, _ = pick(lambda u, step: _delta(cost, touches[u[0]], drop, u, step))
        if best is None:  # no step the model sees a saving in: go on by MACs, each at the average cost per MAC
            best, gain = pick(lambda u, step: rate * _delta(macs, touches[u[0]], drop, u, step))
            if best is None:
                break
            unseen += gain
        for i in best:
            drop[i] += steps[best[0]]
        current = cost.predict(drop) - unseen
    return {g.index: g.width - drop[g.index] for g in groups}, current


def _touches(cost: CostModel, units: list[list[int]]) -> dict[int, list[ConvSite]]:
    out = {}
    for u in units:
        out[u[0]] = [s for s in cost.sites.values() if any(i in s.cin_per_cut or i in s.cout_per_cut for i in u)]
    return out


def _delta(cost: CostModel, sites: list[ConvSite], drop: dict[int, int], unit: list[int], step: int) -> float:
    """Cost saved by cutting `step` more channels from every group of `unit` (only the layers it touches)."""
    after = dict(drop)
    for i in unit:
        after[i] += step
    saved = 0.0
    layers = {}
    for s in sites:
        (ci0, co0), (ci1, co1) = s.widths(drop), s.widths(after)
        saved += cost.conv_cost(s, ci0, co0) - cost.conv_cost(s, ci1, co1)
        layer = layer_of(s.name)
        layers[layer] = layers.get(layer, 0.0) + (co0 - co1) * s.hw
    for layer, act in layers.items():
        if layer in cost.rest and layer in cost.layer_act:
            saved += cost.rest[layer][0] * act / cost.layer_act[layer]
    if "" in cost.rest:
        saved += cost.rest[""][0] * sum(layers.values()) / max(sum(cost.layer_act.values()), 1.0)
    return saved
