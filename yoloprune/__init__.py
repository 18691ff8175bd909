"""yoloprune: graph-based structural pruning of Ultralytics YOLO models into smaller stock checkpoints."""

__version__ = "0.1.0"

from .errors import UserError
from .slimmer import Slimmer

__all__ = ["Slimmer", "UserError", "__version__"]
