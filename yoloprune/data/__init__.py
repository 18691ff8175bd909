"""Datasets the project generates itself (no downloads): see `synthetic.make_dataset`."""

from .synthetic import SHAPES, TASKS, make_dataset

__all__ = ["SHAPES", "TASKS", "make_dataset"]
