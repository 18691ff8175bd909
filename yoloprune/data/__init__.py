"""Datasets the project generates itself (no downloads): drawn shapes (`synthetic.make_dataset`) and real
handwritten digits composited into scenes (`digits.make_digits_dataset`, needs scikit-learn)."""

from .digits import make_digits_dataset
from .synthetic import PRESETS, SHAPES, TASKS, make_dataset

__all__ = ["PRESETS", "SHAPES", "TASKS", "make_dataset", "make_digits_dataset"]
