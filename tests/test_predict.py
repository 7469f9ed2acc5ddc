"""`python -m ms_gpt4image predict`: parity with `evaluate` on the packed eval split (MindIR, deployable
and training checkpoints), image folders as a hostile user makes them, and clear errors."""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from export.readers import FASHION_MNIST_CLASSES, IMG_EXTENSIONS, open_source


def _predict(*args, check=True):
    return run_cli("-m", "ms_gpt4image", "predict", *args, check=check)


def _jsonl(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def _summary(proc):
    """The JSON summary is the last thing on stderr."""
    err = proc.stderr
    return json.loads(err[err.rindex("\n{") + 1:] if "\n{" in err else err[err.index("{"):])


def test_predict_on_packed_split_matches_evaluate(trained, packed, tmp_path):
    cfg, deploy = trained["cfg"], trained["deploy"]
    ev = json.loads(run_cli("-m", "ms_gpt4image", "evaluate", "-c", cfg, "--ckpt", trained["run"] / "last.ckpt").stdout)
    data = packed / "data"
    runs = {
        "mindir": _predict("--model", f"{deploy}.mindir", "--data-dir", data, "--out", tmp_path / "m.jsonl",
                           "--batch-size", 7),  # batches that do not divide the 40 images
        "deploy_ckpt": _predict("--model", f"{deploy}.ckpt", "--data-dir", data, "--out", tmp_path / "d.csv"),
        "train_ckpt": _predict("--model", trained["run"] / "last.ckpt", "-c", cfg, "--data-dir", data,
                               "--out", tmp_path / "t.jsonl"),
    }
    for name, proc in runs.items():
        s = _summary(proc)
        assert s["images"] == ev["count"] == 40, name
        assert s["top1"] == ev["top1"] and s["top5"] == ev["top5"], (name, s, ev)
    m, t = _jsonl(tmp_path / "m.jsonl"), _jsonl(tmp_path / "t.jsonl")
    with open(tmp_path / "d.csv", newline="") as f:
        d = list(csv.DictReader(f))
    assert sorted(r["index"] for r in m) == list(range(40)) and len(d) == 40
    for rm, rd, rt in zip(m, d, t):
        assert rm["index"] == int(rd["index"]) == rt["index"] and rm["label"] == int(rd["label"])
        probs = [x["prob"] for x in rm["topk"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert [x["class"] for x in rm["topk"]] == [int(rd[f"class_{r}"]) for r in range(1, 6)]
        np.testing.assert_allclose(probs, [float(rd[f"prob_{r}"]) for r in range(1, 6)], atol=1e-5)
        np.testing.assert_allclose(probs, [x["prob"] for x in rt["topk"]], atol=1e-5)
        assert rm["topk"][0]["name"] == FASHION_MNIST_CLASSES[rm["topk"][0]["class"]]
    # the table on stdout: a header and one line per image
    lines = runs["mindir"].stdout.strip().splitlines()
    assert len(lines) == 41 and lines[1].startswith("#")


def _hostile_folder(root, packed_images):
    """Packed eval images as files, plus the odd things users' folders hold."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    for i, data in packed_images.items():
        (root / "sub" / f"eval_{i:02d}.png").write_bytes(data)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    photo.save(root / "sub" / "ünïcødé 画像.jpg")
    photo.save(root / "sub" / "deeper" / "photo.webp")
    photo.convert("CMYK").save(root / "sub" / "cmyk.jpg")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one_pixel.png")
    Image.new("L", (2000, 8), 128).save(root / "thin.png")
    Image.fromarray((rng.random((20, 20)) * 65535).astype(np.uint16)).save(root / "sixteen_bit.png")
    (root / "notes.txt").write_text("not an image, and not listed: wrong extension")
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    (root / "sub" / "deeper" / "truncated.png").write_bytes(buf.getvalue()[:120])
    os.symlink(root / "sub", root / "zz_link_to_sub")  # the real folder is listed, the link not again
    os.symlink(root, root / "sub" / "cycle")


def test_predict_on_a_folder(trained, packed, idx_root, tmp_path):
    deploy = trained["deploy"]
    source = open_source("fashion-mnist", idx_root, "test")
    images = {i: source.encoded(i) for i in range(3)}  # the bytes pack stored for eval index i
    root = tmp_path / "imgs"
    _hostile_folder(root, images)
    out = tmp_path / "preds.jsonl"
    # a corrupt file stops the run, named, and nothing is written under the output name
    p = _predict("--model", f"{deploy}.mindir", root, "--out", out, check=False)
    assert p.returncode == 2 and "truncated.png" in p.stderr and "--skip-bad" in p.stderr
    assert "Traceback" not in p.stderr and not out.exists() and not list(tmp_path.glob(".preds*"))
    # --skip-bad: every other image once, the bad one listed
    p = _predict("--model", f"{deploy}.mindir", root, "--out", out, "--skip-bad", "--topk", 3, "--batch-size", 4)
    rows = _jsonl(out)
    names = sorted(os.path.relpath(r["path"], root) for r in rows)
    assert names == sorted(["sub/eval_00.png", "sub/eval_01.png", "sub/eval_02.png", "sub/ünïcødé 画像.jpg",
                            "sub/deeper/photo.webp", "sub/cmyk.jpg", "one_pixel.png", "thin.png", "sixteen_bit.png"])
    assert all(len(r["topk"]) == 3 for r in rows)
    skipped = _jsonl(tmp_path / "preds.jsonl.skipped.jsonl")
    assert [os.path.basename(s["path"]) for s in skipped] == ["truncated.png"] and "truncated" in skipped[0]["error"]
    assert _summary(p)["skipped"] == 1 and not list(root.rglob("unsupported_image*"))
    # an image file gives exactly the prediction of the same image in the packed split
    packed_rows = {r["index"]: r for r in _jsonl(_write_packed_preds(deploy, packed, tmp_path))}
    by_name = {os.path.basename(r["path"]): r for r in rows}
    for i in images:
        got, ref = by_name[f"eval_{i:02d}.png"]["topk"], packed_rows[i]["topk"][:3]
        assert [g["class"] for g in got] == [r["class"] for r in ref]
        np.testing.assert_allclose([g["prob"] for g in got], [r["prob"] for r in ref], atol=1e-6)


def _write_packed_preds(deploy, packed, tmp_path):
    out = tmp_path / "packed.jsonl"
    _predict("--model", f"{deploy}.mindir", "--data-dir", packed / "data", "--out", out)
    return out


@pytest.mark.parametrize("case", ["no_spec", "bad_out", "both_inputs", "missing_path", "empty_folder", "not_a_model"])
def test_predict_errors(trained, packed, tmp_path, case):
    deploy = trained["deploy"]
    img = tmp_path / "a.png"
    Image.new("RGB", (28, 28)).save(img)
    if case == "no_spec":  # a training checkpoint without -c: nothing says which model or classes
        args, needle = ["--model", trained["run"] / "last.ckpt", img], "-c CONFIG"
    elif case == "bad_out":
        args, needle = ["--model", f"{deploy}.mindir", img, "--out", tmp_path / "p.txt"], ".jsonl or .csv"
    elif case == "both_inputs":
        args, needle = ["--model", f"{deploy}.mindir", img, "--data-dir", packed / "data"], "not both"
    elif case == "missing_path":
        args, needle = ["--model", f"{deploy}.mindir", tmp_path / "nope.png"], "nope.png"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args, needle = ["--model", f"{deploy}.mindir", tmp_path / "empty"], "no images"
    else:
        fake = tmp_path / "fake.mindir"
        fake.write_text("not a graph")
        shutil.copy(f"{deploy}.model.json", tmp_path / "fake.model.json")
        args, needle = ["--model", fake, img], "cannot load as MindIR"
    p = _predict(*args, check=False)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_image_extensions_match_the_offline_readers():
    import ast
    import pathlib
    src = (pathlib.Path(__file__).parents[1] / "ms_gpt4image" / "predict.py").read_text()
    value = next(ast.literal_eval(n.value) for n in ast.walk(ast.parse(src))
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "IMG_EXTENSIONS")
    assert value == IMG_EXTENSIONS


def test_interrupted_predict_leaves_nothing(trained, tmp_path):
    """Ctrl-C (which MindSpore turns into SIGTERM) mid-run: exit 130, no output and no temporary file."""
    data = io.BytesIO()
    Image.new("RGB", (28, 28), (90, 90, 90)).save(data, format="PNG")
    (tmp_path / "imgs").mkdir()
    for i in range(3000):  # batch 1: about ten seconds of work
        (tmp_path / "imgs" / f"{i:04d}.png").write_bytes(data.getvalue())
    out = tmp_path / "preds.csv"
    proc = subprocess.Popen([sys.executable, "-m", "ms_gpt4image", "predict", "--model", f"{trained['deploy']}.mindir",
                             tmp_path / "imgs", "--out", out, "--batch-size", "1"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT)))
    for _ in range(5):  # the header, then predictions: the run is under way
        proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".preds*"))
