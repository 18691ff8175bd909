"""`Slimmer`: the public one-shot pipeline rewrite -> trace -> group -> score -> allocate -> cut -> fold back."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from torch import nn
from ultralytics.nn.tasks import guess_model_task

from ..calibrate.bn import Recalibration, recalibrate
from ..calibrate.data import DEFAULT_IMAGES, Calibration, calibration_size, load_calibration
from ..importance.data_aware import DATA_AWARE, gradient_scores
from .allocate import Allocation, allocate
from ..checkpoint import LoadedModel, load_model, save_checkpoint
from ..errors import UserError, check_whole
from ..graph.groups import CoupledGroup, coupled_groups
from ..graph.heads import head_handler
from ..graph.rewrite import SplitBlock, fold_blocks, rewrite_blocks
from ..graph.support import unsupported_layers
from ..graph.trace import build_graph, fixed_layers, max_stride
from ..importance import IMPORTANCES, get_importance, row_scorer
from .report import SlimReport, layer_widths, model_stats, stage_widths
from ..shortcut_rules import ShortcutRules, load_rules


DEFAULT_WITH_DATA = "taylor"  # the scorer used when calibration data is given (measured: README, calibration)


def check_ratio(ratio) -> float:
    """Validate a pruning ratio: a number strictly between 0 and 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1 or not math.isfinite(ratio):
        raise UserError(f"ratio {ratio!r} is outside (0, 1): pass the share of channels to remove, e.g. 0.3")
    return float(ratio)


class Slimmer:
    """Physically slim an Ultralytics YOLO model into a smaller stock Ultralytics model.

    Args:
        model: a `.pt` checkpoint path, a model YAML name/path (`yolo26n.yaml`), a `YOLO` object or a YOLO `BaseModel`.
            The given model is never modified.
        ratio: share of channels to remove, in (0, 1), before shortcut multipliers.
        importance: channel scorer: `l1`, `l2`, `bn` (BatchNorm |gamma|), `lamp`, `random`, or with data `taylor`
            (first-order Taylor on the detection loss) and `fisher` (diagonal Fisher / OBD saliency). Default: the
            data-aware default (`DEFAULT_WITH_DATA`) when `data` is given, else `l1`.
        rules: shortcut rules: `yolo26` (built-in), `none` (uniform) or the path of a rules YAML.
        round_to: kept widths are multiples of this (hardware-friendly channel counts).
        imgsz: image size at which GFLOPs are reported.
        data: calibration data: a `data.yaml` path or a `yoloprune.calibrate.Calibration`. With it, channels may be
            scored on the detection loss and every cut gets its BatchNorm statistics recalibrated (kept only where
            the held-back calibration loss falls).
        calib_images: calibration images drawn from the training split (with `data` as a path).
        calib_imgsz: calibration size (default: the size the checkpoint was trained at, else `imgsz`).
        recalibrate: recalibrate BatchNorm after the cut when data is given (default True).

    Example:
        >>> s = Slimmer("yolo26n.yaml", ratio=0.3)
        >>> print(s.plan().format())  # dry run: widths, params, GFLOPs, nothing written
        >>> slim = s.slim()  # a physically smaller DetectionModel of stock Ultralytics classes
        >>> s.save("yolo26n-slim.pt")
    """

    def __init__(self, model, ratio: float = 0.3, importance: str | None = None, rules="yolo26", round_to: int = 8,
                 imgsz: int = 640, data=None, calib_images: int = DEFAULT_IMAGES, calib_imgsz: int | None = None,
                 recalibrate: bool = True):
        self.ratio = check_ratio(ratio)
        importance = importance or (DEFAULT_WITH_DATA if data is not None else "l1")
        if importance not in IMPORTANCES and importance not in DATA_AWARE:
            get_importance(importance)  # raises the user error with the close match
        if importance in DATA_AWARE and data is None:
            raise UserError(f"importance '{importance}' scores channels on the detection loss: pass calibration data "
                            "(--data data.yaml), or choose l1, l2, bn, lamp or random")
        self.importance = importance
        self.rules: ShortcutRules = load_rules(rules)
        check_whole("round_to", round_to, 1, "8")
        check_whole("imgsz", imgsz, 32, "640")
        self.round_to, self.imgsz = round_to, imgsz
        self.loaded: LoadedModel = load_model(model)
        if head_handler(self.loaded.model.model[-1]) is None:
            head = type(self.loaded.model.model[-1]).__name__
            raise UserError(f"'{self.loaded.source}' has a {head} head, which yoloprune does not support; supported: "
                            "YOLO26/YOLO11/YOLOv8 detect, segment, pose, obb and classify models")
        if bad := unsupported_layers(self.loaded.model):
            raise UserError(f"'{self.loaded.source}' uses {', '.join(bad)} layers, which yoloprune cannot prune yet; "
                            "supported: YOLO26/YOLO11/YOLOv8 models")
        # calibration images are read only once the model is known to be prunable
        self.recalibrate = bool(recalibrate)
        self.calibration: Calibration | None = None
        if isinstance(data, Calibration):
            self.calibration = data
        elif data is not None:
            task = getattr(self.loaded.model, "task", None) or guess_model_task(self.loaded.model)
            size = calib_imgsz or calibration_size(self.loaded, imgsz)
            self.calibration = load_calibration(data, size, calib_images, task)
        self._scores: dict[str, torch.Tensor] | None = None  # data-aware scores by group root name (uncut model)
        self.widths: dict[str, int] | None = None  # planned width by group root name, overriding the ratio's plan
        self.model: nn.Module | None = None  # the slim model once `slim()` ran
        self.report: SlimReport | None = None
        self._cuts: dict[str, list[int]] = {}  # root layer name -> removed channels, of the last cut
        self._attention_rows: dict = {}
        self.recalibration: Recalibration | None = None  # what recalibrating the last cut did
        self.carried: nn.Module | None = None  # the last cut with its carried-over BatchNorm statistics

    def groups(self) -> list[CoupledGroup]:
        """Analysis only: the coupled groups of the model, classified by shortcut kind, with their planned widths."""
        model = copy.deepcopy(self.loaded.model).float().cpu()
        rewrite_blocks(model)
        groups, plan, _ = self._allocate(model)
        for g in groups:
            g.keep = plan[g.index].keep
        return groups

    def plan(self) -> SlimReport:
        """Dry run: slim a copy and report widths, params and GFLOPs before/after; the result is discarded."""
        _, report = self._run()
        return report

    def slim(self) -> nn.Module:
        """Return the physically slim model (stock Ultralytics classes); also kept as `self.model`/`self.report`."""
        self.model, self.report = self._run()
        return self.model

    def save(self, path: str | Path) -> Path:
        """Write the slim model (running `slim()` first if needed) as an Ultralytics checkpoint at `path`."""
        if self.model is None:
            self.slim()
        return save_checkpoint(self.model, path, self.loaded, extra=self.report.to_dict())

    def cut_like(self, twin: nn.Module) -> nn.Module:
        """Cut a copy of `twin` exactly as the last `slim()` cut the model: same groups, same channels.

        `twin` must have the input model's architecture (e.g. the EMA copy of a model in training); its own weights
        are kept, only the channel choice comes from the model that was scored.
        """
        if self.model is None:
            raise RuntimeError("cut_like() needs slim() to have run")
        model = copy.deepcopy(twin).float().cpu()
        was_training = model.training
        rewrite_blocks(model)
        graph = build_graph(model, 2 * max_stride(model), row_scorer(self.importance), replay=self._attention_rows)
        groups = {g.root_name: g for g in coupled_groups(graph, fixed_layers(model))}
        if missing := set(self._cuts) - set(groups):
            raise ValueError(f"twin model differs from the slimmed one (no group at {sorted(missing)[:3]})")
        for name, idxs in self._cuts.items():
            groups[name].tp_group.prune(idxs=idxs)
        fold_blocks(model)
        if self.calibration is not None and self.recalibrate:
            recalibrate(model, self.calibration)
        return model.train(was_training)

    def _run(self) -> tuple[nn.Module, SlimReport]:
        t0 = time.perf_counter()
        base = self.loaded.model
        model = copy.deepcopy(base).float().cpu()
        was_training = model.training
        before = model_stats(model, self.imgsz), layer_widths(model), stage_widths(model)
        rewrite_blocks(model)
        groups, plan, graph = self._allocate(model)
        scorer = self._scorer(model, graph, groups)
        cuts = {}  # every group is scored on the uncut model, then cut
        for g in groups:
            drop = g.width - plan[g.index].keep
            if drop > 0:
                scores = scorer(g.tp_group, g.root_name).cpu()
                cuts[g.index] = sorted(torch.argsort(scores, stable=True)[:drop].tolist())
        for g in groups:
            if g.index in cuts:
                g.tp_group.prune(idxs=cuts[g.index])
        self._cuts = {g.root_name: cuts[g.index] for g in groups if g.index in cuts}
        self._attention_rows = graph.attention.decisions
        fold_blocks(model)
        self.recalibration = self.carried = None
        if self.calibration is not None and self.recalibrate and cuts:
            self.carried = copy.deepcopy(model).train(was_training)
            self.recalibration = recalibrate(model, self.calibration)
        model.train(was_training)
        after = model_stats(model, self.imgsz), layer_widths(model), stage_widths(model)
        report = SlimReport.build(self, groups, plan, before, after, time.perf_counter() - t0)
        if self.recalibration is not None:
            report.recalibration = self.recalibration.to_dict()
        return model, report

    def _scorer(self, model: nn.Module, graph, groups: list[CoupledGroup]):
        """The group scorer; a data-aware one reads scores computed once, on the first (uncut) model traced."""
        if self.importance not in DATA_AWARE:
            return get_importance(self.importance)
        if self._scores is None:
            scores = gradient_scores(model, graph, groups, self.calibration.fit)
            by_index = {g.index: g.root_name for g in groups}
            self._scores = {name: {by_index[i]: v for i, v in per.items()} for name, per in scores.items()}
        mine = self._scores[self.importance]
        return lambda group, root_name: mine[root_name]

    def schedule(self, steps: int) -> list[dict[str, int]]:
        """The planned cut made gradually: every group's width after each of `steps` steps, by group root name.

        Step k of K has removed 1 - (1 - k/K)^3 of each group's planned removal (the cubic schedule of gradual
        pruning: large steps while the model is still redundant, small ones near the end), rounded to the group's
        multiple, tied groups alike; the last step reaches exactly the planned widths (`plan()`).
        """
        check_whole("steps", steps, 1, "3")
        model = copy.deepcopy(self.loaded.model).float().cpu()
        rewrite_blocks(model)
        groups, graph, ties, frozen = self.structure(model)
        plan = self._plan(groups, ties, frozen)
        multiple = {g.index: math.lcm(self.round_to, g.multiple) for g in groups}
        for tie in ties:
            m = math.lcm(*(multiple[i] for i in tie))
            multiple.update(dict.fromkeys(tie, m))
        widths = []
        for k in range(1, steps + 1):
            left = (1 - k / steps) ** 3  # share of the planned removal still to come after step k
            keep = {}
            for g in groups:
                final, m = plan[g.index].keep, multiple[g.index]
                keep[g.index] = min(g.width, final + m * math.floor((g.width - final) * left / m + 0.5))
            for tie in ties:
                keep.update(dict.fromkeys(tie, max(keep[i] for i in tie)))
            widths.append({g.root_name: keep[g.index] for g in groups})
        return widths

    def _allocate(self, model: nn.Module) -> tuple[list[CoupledGroup], dict[int, Allocation], object]:
        groups, graph, ties, frozen = self.structure(model)
        return groups, self._plan(groups, ties, frozen), graph

    def _plan(self, groups: list[CoupledGroup], ties: list[list[int]], frozen: set[int]) -> dict[int, Allocation]:
        plan = allocate(groups, self.ratio, self.rules, self.round_to, ties, frozen)
        if self.widths is not None:  # widths chosen elsewhere: a budget search, a step of a gradual cut
            for g in groups:
                keep = self.widths.get(g.root_name, g.width)
                plan[g.index] = Allocation(keep=keep, ratio=1 - keep / g.width)
        return plan

    def structure(self, model: nn.Module) -> tuple[list[CoupledGroup], object, list[list[int]], set[int]]:
        """Groups of a split-free `model` (kinds set from the rules), its graph, and the width ties and frozen groups
        that folding back into stock blocks imposes."""
        graph = build_graph(model, 2 * max_stride(model), row_scorer(self.importance))
        groups = coupled_groups(graph, fixed_layers(model))
        for g in groups:
            g.kind = self.rules.kind_of(g.kinds)
        owner = {}
        for g in groups:
            for item in g.tp_group:
                if graph.is_out_channel_pruning_fn(item.dep.handler):
                    owner[item.dep.target.module] = g.index
        ties, frozen = [], set()
        for m in model.modules():
            if isinstance(m, SplitBlock):
                tie = sorted({owner[c] for c in m.tied_convs() if c in owner})
                if any(c not in owner for c in m.tied_convs()):  # a half no group may cut: the other stays whole
                    frozen.update(tie)
                elif len(tie) > 1:
                    ties.append(tie)
        return groups, graph, ties, frozen
