"""What a slimming did, measured: params, GFLOPs, per-stage and per-layer widths, groups by shortcut kind."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..graph.groups import KINDS
from ..graph.trace import input_channels, max_stride


def model_stats(model: nn.Module, imgsz: int) -> dict:
    """Parameter count and GFLOPs (Ultralytics' own counter, at `imgsz`)."""
    from ultralytics.utils.torch_utils import get_flops

    return {"params": sum(p.numel() for p in model.parameters()), "gflops": round(get_flops(model, imgsz), 3)}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and linear layer, by module name."""
    return {
        n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@torch.no_grad()
def stage_widths(model: nn.Module) -> list[int | None]:
    """Output channels of each top-level layer (`model.model[i]`) except the head, from a tiny eval forward."""
    widths: list[int | None] = [None] * len(model.model)
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: widths.__setitem__(k, o.shape[1] if torch.is_tensor(o) else None))
        for k, m in enumerate(model.model[:-1])
    ]
    mode = model.training
    stride, ch = max_stride(model), input_channels(model)
    try:
        model.eval()(torch.zeros(1, ch, stride, stride, device=next(model.parameters()).device))
    finally:
        model.train(mode)
        for h in hooks:
            h.remove()
    return widths[:-1]


@dataclass
class GroupRow:
    """One coupled group in the report."""

    root: str
    kind: str
    kinds: list[str]
    width: int
    keep: int
    ratio: float
    clamped: bool
    tied: bool


@dataclass
class SlimReport:
    """Everything a slimming run measured; `format()` for people, `to_dict()` for JSON and checkpoints."""

    source: str
    ratio: float
    importance: str
    rules: str
    round_to: int
    imgsz: int
    before: dict
    after: dict
    stages: list[tuple[int, str, int | None, int | None]]
    layers: dict[str, tuple[int, int]]
    groups: list[GroupRow] = field(default_factory=list)
    seconds: float = 0.0
    target: dict = field(default_factory=dict)  # what a target search asked and reached (`yoloprune.slim.target`)
    calibration: dict = field(default_factory=dict)  # the calibration sample (`yoloprune.calibrate`), if any
    recalibration: dict = field(default_factory=dict)  # what BatchNorm recalibration of the cut did
    validation: dict = field(default_factory=dict)  # mAP of base and slim right after the cut, when measured

    @classmethod
    def build(cls, slimmer, groups, plan, before, after, seconds: float) -> "SlimReport":
        model = slimmer.loaded.model
        names = [type(m).__name__ for m in model.model]
        stages = [(i, names[i], b, a) for i, (b, a) in enumerate(zip(before[2], after[2]))]
        layers = {n: (w, after[1].get(n, 0)) for n, w in before[1].items()}
        rows = [
            GroupRow(g.root_name, g.kind, sorted(g.kinds), g.width, plan[g.index].keep, round(plan[g.index].ratio, 4),
                     plan[g.index].clamped, plan[g.index].tied)
            for g in groups
        ]
        calib = slimmer.calibration.describe() if slimmer.calibration is not None else {}
        return cls(slimmer.loaded.source, slimmer.ratio, slimmer.importance, slimmer.rules.name, slimmer.round_to,
                   slimmer.imgsz, before[0], after[0], stages, layers, rows, round(seconds, 3), calibration=calib)

    def kind_summary(self) -> dict[str, dict]:
        """Per shortcut kind: group count, channels before/after and the share of channels removed."""
        out = {}
        for kind in KINDS:
            rows = [r for r in self.groups if r.kind == kind]
            if rows:
                w, k = sum(r.width for r in rows), sum(r.keep for r in rows)
                out[kind] = {"groups": len(rows), "channels": w, "kept": k, "cut": round(1 - k / w, 4)}
        return out

    @property
    def clamped(self) -> list[str]:
        return [r.root for r in self.groups if r.clamped]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"] = self.kind_summary()
        return d

    def format(self, layers: bool = False) -> str:
        """A readable report; `layers=True` adds every layer's width."""
        b, a = self.before, self.after
        t = self.target
        how = (f"target {t['target']:.2f}x speed-up (measured {t['reached']:.2f}x)" if t.get("kind") == "speedup" else
               f"target {t['target']:.0%} of GFLOPs" if t else f"ratio={self.ratio}")
        lines = [
            f"yoloprune slim: {self.source}  {how} importance={self.importance} rules={self.rules} "
            f"round_to={self.round_to}",
            f"  params   {b['params']:>12,} -> {a['params']:>12,}  ({_pct(a['params'], b['params'])})",
            f"  GFLOPs   {b['gflops']:>12.2f} -> {a['gflops']:>12.2f}  ({_pct(a['gflops'], b['gflops'])}) at imgsz {self.imgsz}",
            "  groups by shortcut kind (channels cut):",
        ]
        for kind, s in self.kind_summary().items():
            lines.append(f"    {kind:<10} {s['groups']:>3} groups  {s['channels']:>6} -> {s['kept']:>6} channels  cut {s['cut']:.1%}")
        if "attention" in self.kind_summary():
            lines.append("    (attention: q/k/v cut equally within every head; the head count is kept)")
        lines.append("  stage widths (output channels):")
        lines.append("    " + "  ".join(f"{i}:{n}({bw}->{aw})" for i, n, bw, aw in self.stages if bw is not None))
        if self.clamped:
            lines.append(f"  clamped to round_to={self.round_to} channels (ratio too high for them): {', '.join(self.clamped)}")
        if layers:
            lines.append("  layer widths:")
            lines += [f"    {n:<40} {w:>5} -> {k:>5}" for n, (w, k) in self.layers.items()]
        c, r, v = self.calibration, self.recalibration, self.validation
        if c:
            lines.append(f"  calibration: {c['images']} images of {c['source']} at {c['imgsz']} ({c['fit_batches']} "
                         f"batches to score and recalibrate, {c['held_batches']} held back to judge)")
        if r:
            lines.append(f"  BatchNorm recalibration: held-back loss {r['loss_before']:.4f} -> {r['loss_after']:.4f}, "
                         + ("kept" if r["kept"] else "not kept (the carried-over statistics do better)"))
        if v:
            lines.append(f"  validation mAP50-95 at {v['imgsz']} (Ultralytics' validator, {v['split']} split): "
                         f"base {v['base'][1]:.4f} -> slim {v['slim'][1]:.4f} right after the cut"
                         + (f" ({v['slim_carried'][1]:.4f} with the carried-over BatchNorm statistics)"
                            if v.get("slim_carried") else ""))
        lines.append(f"  time {self.seconds:.2f}s")
        return "\n".join(lines)


def _pct(new: float, old: float) -> str:
    return f"{(new - old) / old:+.1%}" if old else "n/a"
