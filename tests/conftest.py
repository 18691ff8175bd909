"""Test set-up: Ultralytics fully offline with a private config folder, and shared helpers."""

import tempfile

from yoloprune.offline import use_offline

use_offline(tempfile.mkdtemp(prefix="yoloprune-test-cfg-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def flat_tensors(out):
    """All tensors of a model output (tensor, tuple, list or dict), in order."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    return []


def max_abs_diff(a, b) -> float:
    """Largest |a - b| over all tensors of two outputs of the same structure."""
    ta, tb = flat_tensors(a), flat_tensors(b)
    assert len(ta) == len(tb) and ta, "outputs differ in structure"
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(ta, tb))


@pytest.fixture(scope="session")
def bus_jpg():
    from pathlib import Path

    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
