"""`yoloprune demo`: the whole pipeline end to end at toy sizes, its reuse of finished steps, and its bad inputs."""

import json
import subprocess
import sys

import pytest
import yaml

# toy bases (1 epoch) are fine-tuned without precise BatchNorm: see `--no-precise-bn` in the README
TINY = ["--train", "16", "--val", "8", "--imgsz", "64", "--base-epochs", "1", "--finetune-epochs", "1",
        "--deploy-imgsz", "160", "--speedup", "1.2", "--threads", "2", "--no-precise-bn"]


def demo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "yoloprune.cli", "demo", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    p = demo("--out", str(out), *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p.stdout


def test_demo_runs_every_step_and_ends_with_the_table(finished):
    out, stdout = finished
    for i in range(1, 8):
        assert f"[{i}/7]" in stdout
    table = stdout[stdout.index("[7/7]"):]
    assert "base" in table and "slim + 1 epochs KD" in table and "speed-up" in table
    assert "max rel diff" in stdout  # parity was checked for both exports
    assert "WARNING: the base's mAP50-95" in table  # a 1-epoch base: the user is told the figures mean little
    # calibration is the default, skipped (and said so) for a base whose loss curves are noise
    assert "calibration skipped: the base's mAP50-95" in stdout and "(shortcut rules, ratio searched)" in stdout
    for name in ("base.onnx", "slim.onnx", "slim-64.onnx", "slim.pt", "slim-finetuned.pt", "demo.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "demo.json").read_text())
    assert result["settings"]["calibrate"] is True and result["calibrated"] is False
    base, slim, tuned = result["rows"]
    assert tuned["params"] < base["params"] and tuned["gflops"] < base["gflops"]
    assert base["speedup"] == 1.0 and tuned["speedup"] > 0
    assert result["target"]["kind"] == "speedup" and result["target"]["target"] == 1.2
    acc = result["onnx_accuracy"]  # the slim graph validated beside PyTorch at the training size
    assert acc["imgsz"] == 64 and abs(acc["gap"]) <= acc["max_gap"] and "slim ONNX graph on the val split" in table
    # the fine-tune keeps mosaic augmentation to its last epoch; the base closes it as Ultralytics does
    assert yaml.safe_load((out / "finetune" / "args.yaml").read_text())["close_mosaic"] == 0
    assert yaml.safe_load((out / "base" / "args.yaml").read_text())["close_mosaic"] == 10
    print(f"demo table: base {base}, tuned {tuned}")


def test_demo_outputs_are_plain_ultralytics(finished, bus_jpg):
    out, _ = finished
    code = ("import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); r = m.predict(sys.argv[2], imgsz=64, "
            "verbose=False); print(sum(p.numel() for p in m.model.parameters()))")
    p = subprocess.run([sys.executable, "-c", code, str(out / "slim-finetuned.pt"), str(bus_jpg)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    import onnxruntime as ort

    s = ort.InferenceSession(str(out / "slim.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape == [1, 3, 160, 160]


def test_demo_reuses_finished_steps(finished):
    out, _ = finished
    p = demo("--out", str(out), *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "reused the finished run" in p.stdout and f"reused {out / 'slim.pt'}" in p.stdout
    assert "Starting training" not in p.stdout + p.stderr  # nothing trained again


def test_demo_takes_your_data_and_a_trained_base(finished, tmp_path):
    from yoloprune.data import make_dataset

    out, _ = finished
    other = make_dataset(tmp_path / "five", "detect", train=16, val=8, imgsz=64, classes=5, seed=3)
    p = demo("--out", str(tmp_path / "mine"), "--data", str(other), *TINY)  # a YAML base trained on 5 classes
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"your data: {other}" in p.stdout and "slim + 1 epochs KD" in p.stdout
    assert json.loads((tmp_path / "mine" / "demo.json").read_text())["rows"][2]["params"] > 0
    base = out / "base" / "weights" / "best.pt"
    p = demo("--out", str(tmp_path / "given"), "--model", str(base), "--data", str(out / "shapes" / "data.yaml"), *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"trained base given: {base}" in p.stdout and not (tmp_path / "given" / "base").exists()
    p = demo("--out", str(tmp_path / "bad"), "--model", str(base), "--data", str(other), *TINY)
    assert p.returncode == 2 and "predicts 3 classes but data" in p.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args, message", [
    (["--speedup", "0.9"], "must be a number above 1"),
    (["--data", "missing.yaml"], "data 'missing.yaml' not found"),
    (["--model", "nope.pt"], "not found"),
    (["--base-epochs", "0"], "base-epochs 0 must be a whole number >= 1"),
    (["--imgsz", "16"], "imgsz 16 must be a whole number >= 32"),
])
def test_demo_bad_input(tmp_path, args, message):
    p = demo("--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_demo_out_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    p = demo("--out", str(f))
    assert p.returncode == 2 and "is a file" in p.stderr and f.read_text() == "x"


def test_demo_warns_about_a_weak_or_unfinished_base():
    from yoloprune.demo import base_warnings

    assert base_warnings(0.30, [0.1 * i / 20 + 0.2 for i in range(21)]) == []  # converging: +0.005 of 0.30
    weak = base_warnings(0.05)
    assert len(weak) == 1 and "under 0.1" in weak[0] and "--base-epochs" in weak[0]
    rising = base_warnings(0.30, [0.01 * i for i in range(31)])  # +0.06 over its last 6 of 31 epochs
    assert len(rising) == 1 and "still learning" in rising[0] and "0.2400 -> 0.3000" in rising[0]


@pytest.mark.parametrize("flags, calibrate", [([], True), (["--calibrate"], True), (["--no-calibrate"], False)])
def test_demo_calibrates_by_default(monkeypatch, tmp_path, flags, calibrate):
    import yoloprune.demo
    from yoloprune.cli import main

    seen = {}

    def record(out, settings, data=None, model=None, **overrides):  # stands in for the whole run
        seen["settings"] = yoloprune.demo.replace(settings, **overrides)
        raise yoloprune.demo.UserError("recorded")

    monkeypatch.setattr(yoloprune.demo, "run_demo", record)
    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), *flags]) == 2
    assert seen["settings"].calibrate is calibrate and seen["settings"].imgsz == 128
