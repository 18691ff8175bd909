"""Layer pruning: remove whole repeated blocks (bottlenecks, C3k, PSA blocks) and keep stock Ultralytics modules.

The rule:
- Candidates are the repeated units of a block: the entries of a C2f/C3k2/C2fPSA `m` list (each one's output is
  concatenated into the block's `cv2`, whose input columns for it are removed too) and the members of a chained
  `nn.Sequential` of blocks (C3/C3k/C2PSA `m`, or C3k2's Bottleneck+PSABlock pairs). A unit is a candidate only if
  its input and output widths match, so the unit after it still receives what it expects.
- A unit's score is the importance of the last convolution it runs (the one that writes its output): `bn` the mean
  |BatchNorm gamma|, `l1`/`l2` the mean |w| / RMS of that conv's weight with its BatchNorm scale folded in,
  `random` a fixed per-unit draw. Units are removed lowest score first.
- `ratio` is the share of candidates to remove (candidates live in containers of two or more units); every container
  keeps at least one unit, so no block loses all its depth, and a unit is not removed both whole and in parts.
  When those limits stop the count short, the report says so.
The result is made of stock modules (shorter `ModuleList`/`Sequential`, narrower `cv2`): it loads in plain
Ultralytics. Removing a residual unit whose branch outputs zeros leaves the model's outputs unchanged (tested).
"""

from __future__ import annotations

import copy
import time
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from ultralytics.nn.modules import C2f, Conv

from .report import model_stats
from .slimmer import check_ratio

METRICS = ("l1", "l2", "bn", "lamp", "random")


@dataclass
class Unit:
    """One removable block: `container` (name of its ModuleList/Sequential), its index there, and its score."""

    name: str
    container: str
    index: int
    kind: str  # "concat": entry of a C2f-style list; "chain": member of a Sequential
    type: str
    params: int
    score: float = 0.0


@dataclass
class DepthReport:
    """What layer pruning removed, and params/GFLOPs before and after."""

    ratio: float
    importance: str
    candidates: int
    removed: list[Unit] = field(default_factory=list)
    wanted: int = 0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"method": "layer", "ratio": self.ratio, "importance": self.importance, "candidates": self.candidates,
                "wanted": self.wanted, "removed": [u.__dict__ for u in self.removed], "before": self.before,
                "after": self.after, "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        b, a = self.before, self.after
        lines = [f"layer pruning: removed {len(self.removed)} of {self.candidates} repeated blocks "
                 f"(ratio {self.ratio}, importance {self.importance})"]
        if len(self.removed) < self.wanted:
            lines.append(f"  asked for {self.wanted}; every block keeps at least one unit, so {len(self.removed)} "
                         "could go")
        for u in self.removed:
            lines.append(f"  - {u.name} ({u.type}, {u.params:,} params, score {u.score:.4g})")
        lines.append(f"  params {b['params']:,} -> {a['params']:,} ({a['params'] / b['params']:.1%}), "
                     f"GFLOPs {b['gflops']:.2f} -> {a['gflops']:.2f}")
        return "\n".join(lines)


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _containers(model: nn.Module):
    """(container name, kind, owning C2f or None) for every list/sequence of repeated units."""
    for name, m in model.named_modules():
        if isinstance(m, C2f) and type(m).forward is C2f.forward and isinstance(m.m, nn.ModuleList):
            yield f"{name}.m", "concat", m
        elif isinstance(m, nn.Sequential) and len(m) > 1 and all(_is_block(c) for c in m):
            yield name, "chain", None


def _is_block(m: nn.Module) -> bool:
    """A residual-style block (not a single conv or a plain layer)."""
    return not isinstance(m, (Conv, nn.Conv2d, nn.BatchNorm2d, nn.Upsample, nn.Identity)) and any(
        isinstance(c, Conv) for c in m.modules())


def _trace(model: nn.Module, units: list[tuple[str, nn.Module]]) -> tuple[dict, dict]:
    """Run a zero image and record (in, out) widths of each unit and the last Conv it ran."""
    from ..graph.trace import probe

    widths, last, stack, hooks = {}, {}, [], []

    def enter(name):
        return lambda mod, x: stack.append(name)

    def leave(name):
        def hook(mod, x, y):
            widths[name] = (x[0].shape[1], y.shape[1])
            stack.remove(name)
        return hook

    def ran(mod, x, y):
        for s in stack:
            last[s] = mod

    for name, u in units:
        hooks += [u.register_forward_pre_hook(enter(name)), u.register_forward_hook(leave(name))]
    hooks += [c.register_forward_hook(ran) for c in model.modules() if isinstance(c, Conv)]
    try:
        probe(model)
    finally:
        for h in hooks:
            h.remove()
    return widths, last


def _score(conv: Conv, metric: str, name: str) -> float:
    w = conv.conv.weight.detach().float()
    bn = getattr(conv, "bn", None)
    if metric == "random":
        return torch.rand(1, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))).item()
    if isinstance(bn, nn.BatchNorm2d):
        gamma = bn.weight.detach().float()
        if metric == "bn":
            return gamma.abs().mean().item()
        w = w * (gamma / torch.sqrt(bn.running_var.float() + bn.eps)).view(-1, *[1] * (w.ndim - 1))
    return w.abs().mean().item() if metric == "l1" else w.pow(2).mean().sqrt().item()


def find_units(model: nn.Module, importance: str = "l1") -> list[Unit]:
    """Every removable unit of `model`, scored; see the module docstring for the rule."""
    mods = _modules(model)
    raw = []
    for cname, kind, _ in _containers(model):
        if len(mods[cname]) < 2:
            continue  # a lone unit always stays (its inner units may still go)
        for i, u in enumerate(mods[cname]):
            raw.append((f"{cname}.{i}", cname, i, kind, u))
    widths, last = _trace(model, [(n, u) for n, _, _, _, u in raw])
    units = []
    for name, cname, i, kind, u in raw:
        if name not in widths or widths[name][0] != widths[name][1] or name not in last:
            continue  # not run, or changes width: the next unit would not fit
        units.append(Unit(name, cname, i, kind, type(u).__name__, sum(p.numel() for p in u.parameters()),
                          _score(last[name], importance, name)))
    return units


def choose(units: list[Unit], ratio: float, sizes: dict[str, int]) -> tuple[list[Unit], int]:
    """Lowest-scored units to remove: `round(ratio * len(units))`, each container keeping one unit."""
    wanted = round(ratio * len(units))
    left, removed = dict(sizes), []
    for u in sorted(units, key=lambda u: (u.score, u.name)):
        if len(removed) >= wanted:
            break
        if left[u.container] <= 1 or any(u.name.startswith(r.name + ".") or r.name.startswith(u.name + ".")
                                          for r in removed):
            continue  # the container keeps one unit; a unit inside a removed one (or around one) is settled
        removed.append(u)
        left[u.container] -= 1
    return removed, wanted


def remove_units(model: nn.Module, names: list[str]) -> nn.Module:
    """Remove the named units from `model` in place (and the matching `cv2` input columns of C2f-style blocks)."""
    mods = _modules(model)
    owners = {cname: owner for cname, _, owner in _containers(model)}
    by_container: dict[str, list[int]] = {}
    for n in names:
        cname, _, idx = n.rpartition(".")
        by_container.setdefault(cname, []).append(int(idx))
    slot_widths = {}
    if any(owners.get(c) is not None for c in by_container):
        widths, _ = _trace(model, [(f"{c}.{i}", u) for c in by_container if owners.get(c) is not None
                                    for i, u in enumerate(mods[c])])
        slot_widths = widths
    for cname, idxs in by_container.items():
        container, drop = mods[cname], set(idxs)
        kept = [u for i, u in enumerate(container) if i not in drop]
        owner = owners.get(cname)
        if owner is not None:  # C2f-style: the unit's output was a slot of the concat into cv2
            half = owner.cv1.conv.out_channels // 2
            slots = [half, half] + [slot_widths[f"{cname}.{i}"][1] for i in range(len(container))]
            keep_cols, start = [], 0
            for s, width in enumerate(slots):
                if s < 2 or (s - 2) not in drop:
                    keep_cols += range(start, start + width)
                start += width
            conv = owner.cv2.conv
            conv.weight = nn.Parameter(conv.weight.detach()[:, keep_cols].clone(), requires_grad=conv.weight.requires_grad)
            conv.in_channels = len(keep_cols)
            owner.m = nn.ModuleList(kept)
        else:
            parent_name, _, attr = cname.rpartition(".")
            setattr(mods[parent_name] if parent_name else model, attr, nn.Sequential(*kept))
    for layer in getattr(model, "model", []):
        layer.np = sum(p.numel() for p in layer.parameters())  # Ultralytics' per-layer param count, shown in info()
    return model


class LayerPruner:
    """Remove the least important repeated blocks of a YOLO model (see the module docstring for the rule).

    Args:
        model: a `.pt` path, a model YAML, a `YOLO` or a YOLO model; never modified.
        ratio: share of removable blocks to remove, in (0, 1).
        importance: `l1`, `l2`, `bn`, `lamp` (as l2) or `random`.
        imgsz: image size at which GFLOPs are reported.

    Example:
        >>> lp = LayerPruner("yolo26s.yaml", ratio=0.5)
        >>> slim = lp.slim(); print(lp.report.format())
    """

    def __init__(self, model, ratio: float = 0.3, importance: str = "l1", imgsz: int = 640):
        from ..checkpoint import load_model
        from ..errors import UserError, close_match

        self.ratio = check_ratio(ratio)
        if importance not in METRICS:
            raise UserError(f"importance '{importance}' is unknown{close_match(importance, METRICS)}; "
                            f"use one of {', '.join(METRICS)}")
        self.importance, self.imgsz = importance, imgsz
        self.loaded = load_model(model)
        self.model: nn.Module | None = None
        self.report: DepthReport | None = None

    def plan(self) -> DepthReport:
        """Dry run: what would be removed, with params/GFLOPs after; nothing is kept."""
        return self._run()[1]

    def slim(self) -> nn.Module:
        self.model, self.report = self._run()
        return self.model

    def cut_like(self, twin: nn.Module) -> nn.Module:
        """Remove from a copy of `twin` (same architecture) exactly the blocks the last `slim()` removed."""
        if self.report is None:
            raise RuntimeError("cut_like() needs slim() to have run")
        return remove_units(copy.deepcopy(twin).float().cpu(), [u.name for u in self.report.removed])

    def save(self, path):
        from ..checkpoint import save_checkpoint

        if self.model is None:
            self.slim()
        return save_checkpoint(self.model, path, self.loaded, extra=self.report.to_dict())

    def _run(self) -> tuple[nn.Module, DepthReport]:
        t0 = time.perf_counter()
        model = copy.deepcopy(self.loaded.model).float().cpu()
        imp = "l2" if self.importance == "lamp" else self.importance
        units = find_units(model, imp)
        mods = _modules(model)
        sizes = {c: len(mods[c]) for c, _, _ in _containers(model)}
        removed, wanted = choose(units, self.ratio, sizes)
        before = model_stats(model, self.imgsz)
        remove_units(model, [u.name for u in removed])
        report = DepthReport(self.ratio, self.importance, len(units), removed, wanted, before,
                             model_stats(model, self.imgsz), time.perf_counter() - t0)
        return model, report
