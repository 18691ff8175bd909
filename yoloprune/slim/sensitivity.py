"""Sensitivity of every coupled group: how much the detection loss rises when that group alone is thinned.

For each unit (a group, or the groups tied to one width by a block that folds back into its stock class) and a few
candidate widths, the unit alone is cut (the channels the slimmer's scorer ranks lowest), BatchNorm statistics are
re-estimated on half of a calibration subsample and the detection loss is measured on the other half; the rise over
the uncut model (recalibrated alike) is the unit's sensitivity at that width. Between the measured widths the curve
is interpolated linearly (zero at full width), below the narrowest it is extended along its last segment, and it
never falls as the width falls.

Beside every measurement stands the first-order Taylor estimate the data-aware scorers make for free (the sum of the
removed channels' scores), so the estimate can be checked against the measured rises (`Sensitivity.agreement`).

Measured curves are cached per model weights, calibration data and settings (`cache`), so a second search on the same
model costs nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..calibrate.bn import calibration_loss, reestimate_bn
from ..calibrate.data import Calibration
from ..graph.rewrite import rewrite_blocks
from .budget import cut_units

SHARES = (0.25, 0.5, 0.75)  # shares of a unit's removable channels probed
IMAGES = 128  # calibration images used (half re-estimate BatchNorm, half measure the loss)


@dataclass
class Unit:
    """Groups cut together to one width (`names`: their root layer names), their width and channel step."""

    names: list[str]
    width: int
    step: int

    @property
    def key(self) -> str:
        return unit_key(self.names)


def unit_key(names) -> str:
    """The key of the unit made of the groups with these root layer names."""
    return "+".join(names)


@dataclass
class Sensitivity:
    """Measured loss rises per unit and width; see the module docstring."""

    base_loss: float
    rises: dict[str, dict[int, float]] = field(default_factory=dict)  # unit key -> {width: loss rise}
    estimates: dict[str, dict[int, float]] = field(default_factory=dict)  # unit key -> {width: Taylor estimate}
    widths: dict[str, int] = field(default_factory=dict)  # unit key -> full width
    images: int = 0
    seconds: float = 0.0

    def rise(self, key: str, width: int) -> float:
        """Interpolated loss rise of unit `key` cut to `width` channels (0 for an unmeasured unit)."""
        full = self.widths.get(key)
        if full is None or width >= full:
            return 0.0
        pts = sorted([(full, 0.0)] + [(int(w), v) for w, v in self.rises[key].items()], reverse=True)
        level, curve = 0.0, []
        for w, v in pts:  # never falls as the width falls
            level = max(level, v)
            curve.append((w, level))
        for (w0, v0), (w1, v1) in zip(curve, curve[1:]):
            if w1 <= width <= w0:
                return v0 + (v1 - v0) * (w0 - width) / max(w0 - w1, 1)
        (w0, v0), (w1, v1) = curve[-2], curve[-1]  # below the narrowest measured width: its last slope
        return v1 + (v1 - v0) / max(w0 - w1, 1) * (w1 - width)

    def price(self, groups, width: int, step: int) -> float:
        """Loss rise of cutting the unit of `groups` (tied groups, in the order the graph gives them) from `width`
        to `width - step` channels: the step price of `allocate_budget`."""
        key = unit_key(g.root_name for g in groups)
        return self.rise(key, width - step) - self.rise(key, width)

    def agreement(self) -> float | None:
        """Spearman rank correlation of the Taylor estimates with the measured rises over every probe (None
        without estimates)."""
        pairs = [(self.estimates[k][w], v) for k, per in self.rises.items() for w, v in per.items()
                 if w in self.estimates.get(k, {})]
        if len(pairs) < 3:
            return None
        est, mea = (torch.tensor(x, dtype=torch.float64) for x in zip(*pairs))
        ra, rb = (x.argsort().argsort().double() for x in (est, mea))
        ra, rb = ra - ra.mean(), rb - rb.mean()
        return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        s = cls(**d)
        s.rises = {k: {int(w): v for w, v in per.items()} for k, per in s.rises.items()}
        s.estimates = {k: {int(w): v for w, v in per.items()} for k, per in s.estimates.items()}
        return s


def units(slimmer) -> list[Unit]:
    """The units of `slimmer`'s model that can lose channels: tied groups together, frozen ones left out."""
    model = copy.deepcopy(slimmer.loaded.model).float().cpu()
    rewrite_blocks(model)
    groups, _, ties, frozen = slimmer.structure(model)
    return _units(groups, ties, frozen, slimmer.round_to)


def _units(groups, ties, frozen, round_to: int) -> list[Unit]:
    by_index = {g.index: g for g in groups}
    out = []
    for members in cut_units(groups, ties, frozen):
        gs = [by_index[i] for i in members]
        step = math.lcm(round_to, *(g.multiple for g in gs))
        width = min(g.width for g in gs)
        if width > step:
            out.append(Unit([g.root_name for g in gs], width, step))
    return out


def probe_widths(unit: Unit, shares=SHARES) -> list[int]:
    """The widths a unit is measured at: each share of its removable channels, in whole steps, at least one step."""
    widths = set()
    for s in shares:
        keep = unit.width - math.floor(s * (unit.width - unit.step) / unit.step + 0.5) * unit.step
        if unit.step <= keep < unit.width:
            widths.add(keep)
    return sorted(widths, reverse=True)


def measure(slimmer, shares=SHARES, images: int = IMAGES, cache: str | Path | None = "default",
            progress: bool = True) -> Sensitivity:
    """Measure every unit's sensitivity with `slimmer`'s scorer and calibration data (see the module docstring).

    A unit is cut by masking: its channels' producers (convolution rows, BatchNorm scale and shift) are zeroed in the
    uncut model, which then computes exactly what the physically cut model computes (`mask_cut`); units that reach
    into attention are cut physically. `cache`: a folder for the measured curves ("default":
    `$XDG_CACHE_HOME/yoloprune/sensitivity`; None: no cache).
    """
    calib = slimmer.calibration
    if calib is None:
        raise ValueError("sensitivity needs calibration data: give the slimmer data")
    sub = Calibration(_first_images(calib.batches, images), calib.source, calib.imgsz, calib.task, calib.seed)
    half = max(1, len(sub.batches) // 2)
    fit, held = sub.batches[:half], sub.batches[half:] or sub.batches
    path = _cache_path(slimmer, sub, shares, cache)
    if path is not None and path.is_file():
        return Sensitivity.from_dict(json.loads(path.read_text()))
    t0 = time.perf_counter()
    model = copy.deepcopy(slimmer.loaded.model).float().cpu()
    rewrite_blocks(model)  # the split-free form the groups are traced on: the same function as the stock model
    groups, graph, ties, frozen = slimmer.structure(model)
    scorer = slimmer._scorer(model, graph, groups)  # data-aware scores: computed once, shared with later cuts
    by_name = {g.root_name: g for g in groups}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reestimate_bn(model, fit)
    result = Sensitivity(calibration_loss(model, held), images=sub.images)
    todo = _units(groups, ties, frozen, slimmer.round_to)
    probes = [(u, w) for u in todo for w in probe_widths(u, shares)]
    saved = slimmer.widths, slimmer.model, slimmer.report, slimmer.recalibrate, slimmer.recalibration, slimmer.carried
    slimmer.recalibrate = False
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(probes), desc=f"sensitivity of {len(todo)} groups", unit="cut")
    try:
        for u, w in probes:
            gs = [by_name[n] for n in u.names]
            order = {g.root_name: torch.argsort(scorer(g.tp_group, g.root_name).cpu(), stable=True) for g in gs}
            cuts = {g.root_name: order[g.root_name][: g.width - w].tolist() for g in gs}
            if all(mask_cut(graph, g.tp_group, cuts[g.root_name]) for g in gs):
                reestimate_bn(model, fit)
                loss = calibration_loss(model, held)
            else:  # attention inside: a physical cut
                slimmer.widths = dict.fromkeys(u.names, w)
                cut = slimmer.slim()
                reestimate_bn(cut, fit)
                loss = calibration_loss(cut, held)
            model.load_state_dict(original)
            result.rises.setdefault(u.key, {})[w] = loss - result.base_loss
            result.widths[u.key] = u.width
            if bar is not None:
                bar.update()
        scores = (slimmer._scores or {}).get("taylor")
        if scores is not None:  # the data-aware scorer's own estimate of the same cuts
            for u in todo:
                per = [scores[n].double().sort().values for n in u.names if n in scores]
                if per:
                    result.estimates[u.key] = {w: float(sum(p[: u.width - w].sum() for p in per))
                                               for w in probe_widths(u, shares)}
    finally:
        if bar is not None:
            bar.close()
        (slimmer.widths, slimmer.model, slimmer.report, slimmer.recalibrate, slimmer.recalibration,
         slimmer.carried) = saved
    result.seconds = round(time.perf_counter() - t0, 1)
    if path is not None:
        from ..checkpoint import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result.to_dict())
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return result


@torch.no_grad()
def mask_cut(graph, group, channels: list[int]) -> bool:
    """Zero the producers of `channels` (root indices) of a coupled group in place: every convolution or linear row
    that writes them and every BatchNorm scale and shift of them, so they carry zeros everywhere, as if removed.
    Returns False, touching nothing, where a producer is not a plain convolution, linear or BatchNorm layer."""
    from torch import nn

    cut = set(channels)
    edits = []
    for item in group:
        if not graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        m = item.dep.target.module
        if type(m).__module__.startswith("torch_pruning"):  # the tracer's own nodes (additions, concatenations)
            continue
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)) or m.weight is None:
            return False
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels:  # grouped, not depthwise
            return False
        if item.root_idxs is None or any(r is None for r in item.root_idxs):
            return False
        idxs = [i for i, r in zip(item.idxs, item.root_idxs) if r in cut]
        edits.append((m, idxs))
    for m, idxs in edits:
        if not idxs:
            continue
        at = torch.as_tensor(idxs, dtype=torch.long)
        m.weight[at] = 0
        if m.bias is not None:
            m.bias[at] = 0
    return True


def _first_images(batches: list[dict], images: int) -> list[dict]:
    out, n = [], 0
    for b in batches:
        if n >= images:
            break
        out.append(b)
        n += len(b["img"])
    return out


def _cache_path(slimmer, sub: Calibration, shares, cache) -> Path | None:
    if cache is None:
        return None
    if cache == "default":
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloprune" / "sensitivity"
    h = hashlib.sha1()
    for k, v in slimmer.loaded.model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    key = json.dumps([sub.describe(), list(shares), slimmer.importance, slimmer.round_to, slimmer.rules.name])
    h.update(key.encode())
    return Path(cache) / f"{h.hexdigest()[:16]}.json"
