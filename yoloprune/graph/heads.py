"""Prediction heads: how to run every branch for tracing, and which final layers keep their widths.

Tracing calls each branch of a head directly (one-to-many *and* one-to-one of end-to-end YOLO26 heads, mask protos,
keypoint and angle branches), without the `detach()` that end-to-end heads apply in training and without the
decoding that follows, so every convolution that reads the neck features is in the graph. The final prediction
layers (box, class, mask-coefficient, proto, keypoint, angle outputs, classifier) are fixed: their output widths are
what the task defines.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from ultralytics.nn.modules.block import Proto26
from ultralytics.nn.modules.head import OBB, OBB26, Classify, Detect, Pose, Pose26, Segment, Segment26

# branch names of Detect-family heads that map level i of the neck to a prediction (Sequential ending in a Conv2d)
_BRANCHES = ("cv2", "cv3", "cv4")
_TAILS = ("_kpts", "_sigma")  # per-level output layers that read a branch's features (Pose26)


def _branch_lists(head: nn.Module, prefix: str) -> list[nn.ModuleList]:
    return [m for n in _BRANCHES if isinstance(m := getattr(head, prefix + n, None), nn.ModuleList)]


def _detect_outputs(head: Detect, x: list[torch.Tensor]) -> list[torch.Tensor]:
    outs = []
    for prefix in ("", "one2one_"):
        for name in _BRANCHES:
            branch = getattr(head, prefix + name, None)
            if not isinstance(branch, nn.ModuleList):
                continue
            feats = [branch[i](x[i]) for i in range(head.nl)]
            # Pose26: cv4 yields features that separate keypoint and sigma layers read
            tails = [t for s in _TAILS if isinstance(t := getattr(head, prefix + name + s, None), nn.ModuleList)]
            outs += [t[i](feats[i]) for t in tails for i in range(head.nl)] if tails else feats
    proto = getattr(head, "proto", None)
    if proto is not None:
        if isinstance(proto, Proto26):  # its semantic branch runs in training, unless fusing removed it
            p = proto(x, return_semantic=getattr(proto, "semseg", None) is not None)
        else:
            p = proto(x[0])
        outs += list(p) if isinstance(p, tuple) else [p]
    return outs


def _detect_fixed(head: Detect) -> list[nn.Module]:
    fixed = []
    for prefix in ("", "one2one_"):
        for branch in _branch_lists(head, prefix):
            fixed += [seq[-1] for seq in branch if isinstance(seq[-1], nn.Conv2d)]
        for name in _BRANCHES:
            for s in _TAILS:
                fixed += list(getattr(head, prefix + name + s, None) or [])
    proto = getattr(head, "proto", None)
    if proto is not None:
        fixed.append(proto.cv3.conv)  # mask prototypes: their count is the mask-coefficient count
        semseg = getattr(proto, "semseg", None)
        if semseg is not None:
            fixed.append(semseg[-1])  # semantic logits: one per class
    return fixed


def _classify_outputs(head: Classify, x) -> list[torch.Tensor]:
    return [head(x)]


def _classify_fixed(head: Classify) -> list[nn.Module]:
    return [head.linear]


# head type -> (trace outputs, fixed layers), exact types only: subclasses with other forwards (World, YOLOE,
# RT-DETR) are refused rather than traced wrongly
_DETECT = (_detect_outputs, _detect_fixed)
HEADS: dict[type, tuple[Callable, Callable]] = {
    **{t: _DETECT for t in (Detect, Segment, Segment26, Pose, Pose26, OBB, OBB26)},
    Classify: (_classify_outputs, _classify_fixed),
}


def head_handler(head: nn.Module) -> tuple[Callable, Callable] | None:
    """Return `(trace_outputs, fixed_layers)` for a head module, or None if it is not a supported head."""
    return HEADS.get(type(head))
