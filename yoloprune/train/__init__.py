"""Training pieces: sparsity regularisation, pruning inside training, trainers that keep slim models slim."""

from .config import CompressionConfig, PruningConfig, SparsityConfig
from .regularize import L1Regularizer, StructuredL1Regularizer, get_sparsity

__all__ = ["CompressionConfig", "PruningConfig", "SparsityConfig", "L1Regularizer", "StructuredL1Regularizer",
           "get_sparsity", "trainer_for", "train"]


def trainer_for(task_or_model):
    """The yoloprune trainer class for a task (`detect`, `segment`, `pose`, `obb`, `classify`) or a YOLO model."""
    from .trainer import trainer_for as _trainer_for

    return _trainer_for(task_or_model)


def train(model=None, **kwargs):
    """Train `model` (a `.pt` path, a model YAML or a `YOLO`) with Ultralytics' and yoloprune's keys; see `run.py`."""
    from .run import train as _train

    return _train(model, **kwargs)
