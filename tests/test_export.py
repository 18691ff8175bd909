"""`yoloprune export`: base and slim models of every task match PyTorch in ONNX Runtime, the exported model keeps its
mAP on a data set (`--data`); bad inputs write nothing."""

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
    (["yolo26n.yaml", "--data", "{tmp}/missing.yaml"], "data '{tmp}/missing.yaml' not found"),
    (["yolo26n.yaml", "--data", "{tmp}/junk.pt", "--max-map-gap", "-1"], "cannot use data"),
])
def test_bad_export_input(args, message, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "export", *[a.format(tmp=tmp_path) for a in args]],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and message.format(tmp=tmp_path) in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))


def test_export_validates_the_onnx_model_on_data(trained, tmp_path):
    pt, data = trained
    r = subprocess.run([sys.executable, "-m", "yoloprune.cli", "export", str(pt), "--imgsz", "64", "--data", str(data),
                        "--output", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    print(r.stdout[-800:])
    assert r.returncode == 0, r.stderr[-1500:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("mAP50-95 on"))
    torch_map, onnx_map = (float(line.split(k)[1].split()[0].rstrip(",")) for k in ("PyTorch ", "ONNX Runtime "))
    assert torch_map > 0.1 and abs(torch_map - onnx_map) <= 0.002 and (tmp_path / "m.onnx").is_file()


def test_accuracy_check_fails_a_broken_graph(trained, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from yoloprune.deploy.accuracy import check_accuracy

    pt, data = trained
    good = export(str(pt), imgsz=64, output=tmp_path / "good.onnx", verbose=False).path
    graph = onnx.load(str(good))
    convs = [i for i in graph.graph.initializer if numpy_helper.to_array(i).ndim == 4]
    # the middle third of the convolutions compute something else (one negated conv alone can leave a briefly
    # trained model's mAP where it was, or even lift it, as measured on one platform)
    for w in convs[len(convs) // 3:2 * len(convs) // 3]:
        w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w).astype(np.float32), w.name))
    onnx.save(graph, str(tmp_path / "broken.onnx"))
    ok = check_accuracy(good, pt, data, 64)
    broken = check_accuracy(tmp_path / "broken.onnx", pt, data, 64)
    print(ok.format(), broken.format(), sep="\n")
    assert ok.ok and ok.torch[1] > 0.1
    assert not broken.ok and broken.gap > 0.002
