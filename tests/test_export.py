"""`yoloprune export`: base and slim models of every task match PyTorch in ONNX Runtime; bad inputs write nothing."""

import subprocess
import sys

import pytest

from yoloprune import Slimmer
from yoloprune.deploy.export import export, parity

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("yaml", ["yolo26n.yaml", "yolo26n-seg.yaml", "yolo26n-pose.yaml", "yolo26n-obb.yaml",
                                  "yolo26n-cls.yaml", "yolo11n.yaml"])
def test_base_and_slim_match_pytorch(yaml, tmp_path):
    slim = Slimmer(yaml, ratio=0.3, imgsz=160).save(tmp_path / "slim.pt")
    for src, name in ((yaml, "base"), (slim, "slim")):
        r = export(str(src), imgsz=160, output=tmp_path / f"{name}.onnx")
        print(yaml, name, r.format())
        assert r.path.is_file() and r.max_rel <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.onnx", "slim.onnx", "slim.pt"]  # no temp files left


def test_parity_catches_a_wrong_graph(tmp_path):
    import torch

    from yoloprune.checkpoint import LoadedModel, save_checkpoint

    s = Slimmer("yolo26n.yaml", ratio=0.3, imgsz=160)
    a = s.save(tmp_path / "a.pt")
    with torch.no_grad():  # the same shapes, other weights: what a wrong graph would compute
        for b in s.model.model[-1].cv3:
            b[-1].bias.add_(0.5)  # class scores move
    b = save_checkpoint(s.model, tmp_path / "b.pt", LoadedModel(s.model, "b", False))
    r = export(str(a), imgsz=160, output=tmp_path / "a.onnx")
    _, rel, _, _ = parity(r.path, b, 160)
    print("relative difference against another model:", rel)
    assert rel > 1e-3


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing.pt"], "not found"),
    (["{tmp}/junk.pt"], ""),
    (["yolo26n.yaml", "--format", "tflite"], "format 'tflite' is not supported"),
    (["yolo26n.yaml", "--output", "{tmp}/x.pt"], "must end in .onnx"),
    (["yolo26n.yaml", "--output", "{tmp}/no/dir/x.onnx"], "does not exist"),
])
def test_bad_export_input(args, message, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "export", *[a.format(tmp=tmp_path) for a in args]],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))
