"""Which top-level YOLO layers the graph handles: blocks proven by the tests, refused by name otherwise.

A block that splits channels without a registered rewrite (YOLOv9's `RepNCSPELAN4`, YOLO12's `A2C2f`, YOLOv10's
`PSA`/`C2fCIB`, ...) would make tracing fail or hang, so models containing one are refused before any work.
"""

from __future__ import annotations

from torch import nn
from ultralytics.nn.modules import block, conv

from .heads import HEADS
from .rewrite import SplitBlock, registered_blocks

# blocks without a channel split (or with a registered rewrite), checked by tests/test_models.py
_PLAIN = (
    conv.Conv, conv.DWConv, conv.Concat, nn.Upsample, block.SPPF, block.SPP, block.C3, block.C3k, block.Bottleneck,
)


def unsupported_layers(model: nn.Module) -> list[str]:
    """Type names of the model's top-level layers that yoloprune cannot prune safely (empty when all are fine)."""
    ok = (*_PLAIN, *registered_blocks(), *HEADS)
    return sorted({type(m).__name__ for m in model.model if type(m) not in ok and not isinstance(m, SplitBlock)})
