"""The `yoloprune slim` command as a user runs it: a subprocess, a stock checkpoint, one-line errors."""

import subprocess
import sys
import textwrap

import pytest
import torch


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "yoloprune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def slim_pt(tmp_path_factory):
    out = tmp_path_factory.mktemp("slim") / "s.pt"
    r = run("slim", "yolo26n.yaml", "--ratio", "0.3", "--output", out, "--json", out.with_suffix(".json"))
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_slim_report(slim_pt):
    out, stdout = slim_pt
    assert out.is_file() and out.with_suffix(".json").is_file()
    for word in ("params", "GFLOPs", "stage widths", "residual", "csp", "concat", "attention", "regular", "time"):
        assert word in stdout


def test_slim_checkpoint_is_plain_ultralytics(slim_pt, bus_jpg, tmp_path):
    """A fresh process with only Ultralytics: load, check classes, predict on bus.jpg, export ONNX."""
    out, _ = slim_pt
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["YOLO_OFFLINE"] = "1"
        from ultralytics import YOLO
        m = YOLO(r"{out}")
        roots = {{type(x).__module__.split(".")[0] for x in m.model.modules()}}
        assert roots <= {{"torch", "ultralytics"}}, roots
        assert m.task == "detect" and len(m.names) == 80
        params = sum(p.numel() for p in m.model.parameters())
        r = m.predict(r"{bus_jpg}", imgsz=320, verbose=False)
        assert r[0].boxes is not None
        f = m.export(format="onnx", imgsz=320)
        assert os.path.getsize(f) > 0
        assert "yoloprune" not in sys.modules
        print("PARAMS", params)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**__import__("os").environ})
    assert r.returncode == 0, r.stderr[-2000:]
    params = int(r.stdout.split("PARAMS")[1].split()[0])
    assert params < 2_572_280  # yolo26n base


def test_dry_run_writes_nothing(tmp_path):
    r = run("slim", "yolo26n.yaml", "--ratio", "0.3", "--dry-run", "--layers", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "layer widths" in r.stdout and "nothing written" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_default_output_next_to_checkpoint(slim_pt, tmp_path):
    src = tmp_path / "base.pt"
    src.write_bytes(slim_pt[0].read_bytes())
    r = run("slim", src, "--ratio", "0.2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "base-slim.pt").is_file()


def _bad_inputs(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    no_model = tmp_path / "no_model.pt"
    torch.save({"weights": torch.zeros(3)}, no_model)
    not_yolo = tmp_path / "linear.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, not_yolo)
    bad_rules = tmp_path / "rules.yaml"
    bad_rules.write_text("multipliers:\n  residul: 0.5\n")
    return {
        "missing file": (["missing.pt"], "not found"),
        "not a checkpoint": ([garbage], "not a readable"),
        "no YOLO model": ([no_model], "no Ultralytics YOLO model"),
        "non-YOLO model": ([not_yolo], "no Ultralytics YOLO model"),
        "unknown yaml": (["yolo99q.yaml"], "not found"),
        "unsupported head": (["yolov8s-world.yaml"], "does not support"),
        "unsupported block": (["yolo12n.yaml"], "A2C2f layers, which yoloprune cannot prune yet"),
        "ratio too high": (["yolo26n.yaml", "--ratio", "1.2"], "outside (0, 1)"),
        "ratio zero": (["yolo26n.yaml", "--ratio", "0"], "outside (0, 1)"),
        "unknown importance": (["yolo26n.yaml", "--importance", "l3"], "unknown importance"),
        "unknown rules": (["yolo26n.yaml", "--rules", "yolo25"], "did you mean 'yolo26'"),
        "bad rules key": (["yolo26n.yaml", "--rules", bad_rules], "'residul' (did you mean 'residual'?)"),
        "missing output folder": (["yolo26n.yaml", "--output", tmp_path / "nope" / "s.pt"], "does not exist"),
        "unwritable output": (["yolo26n.yaml", "--output", "/proc/s.pt"], "cannot write"),
        "bad round_to": (["yolo26n.yaml", "--round-to", "0"], "round_to"),
    }


@pytest.mark.parametrize("case", [
    "missing file", "not a checkpoint", "no YOLO model", "non-YOLO model", "unknown yaml", "unsupported head", "unsupported block", "ratio too high",
    "ratio zero", "unknown importance", "unknown rules", "bad rules key", "missing output folder",
    "unwritable output", "bad round_to"])
def test_bad_input_is_one_line_error(case, tmp_path):
    args, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    out.mkdir()
    extra = [] if "--output" in args else ["--output", out / "s.pt"]
    r = run("slim", *args, *extra, cwd=out)
    print(case, "->", r.stderr.strip())
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr
    assert list(out.iterdir()) == [], "no output may be written"


def test_checkpoint_keeps_names_task_and_args(tmp_path):
    """Slimming a trained-style checkpoint keeps class names, nc, task and train args."""
    from ultralytics import YOLO

    yolo = YOLO("yolo26n-seg.yaml")
    names = {i: f"thing{i}" for i in range(80)}
    yolo.model.names = names
    base = tmp_path / "base.pt"
    torch.save({"model": yolo.model, "train_args": {"imgsz": 320, "data": "mine.yaml", "task": "segment"}}, base)
    r = run("slim", base, "--ratio", "0.3")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(tmp_path / "base-slim.pt", weights_only=False)
    assert ckpt["train_args"]["data"] == "mine.yaml" and ckpt["yoloprune"]["ratio"] == 0.3
    slim = YOLO(tmp_path / "base-slim.pt")
    assert slim.task == "segment" and slim.names == names and slim.model.model[-1].nc == 80


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    from yoloprune.checkpoint import atomic_write

    out = atomic_write(tmp_path / "x.json", lambda tmp: open(tmp, "w").write("{}"))
    umask = os.umask(0)
    os.umask(umask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~umask)
