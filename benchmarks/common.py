"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import copy
import json
from pathlib import Path


class State:
    """A JSON file of everything a benchmark measured so far (`empty` when there is none yet); saved after every
    step, atomically, so an interrupted run resumes where it stopped."""

    def __init__(self, path: Path, empty: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else copy.deepcopy(empty)

    def save(self) -> None:
        from yoloprune.checkpoint import atomic_write

        text = json.dumps(self.data, indent=2)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
