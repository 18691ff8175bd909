"""yoloprune: graph-based structural pruning of Ultralytics YOLO models into smaller stock checkpoints.

The public names load lazily, so `yoloprune.offline.use_offline()` can run before Ultralytics is imported.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Slimmer": "slim.slimmer",
    "SlimReport": "slim.report",
    "UserError": "errors",
    "ChannelPruner": "compat",
    "prune_model": "compat",
    "load_rules": "shortcut_rules",
    "LayerPruner": "slim.depth",
    "L1Regularizer": "train.regularize",
    "StructuredL1Regularizer": "train.regularize",
    "get_sparsity": "train.regularize",
    "trainer_for": "train",
    "make_dataset": "data",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'yoloprune' has no attribute '{name}'")
