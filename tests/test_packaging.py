"""The pip package: a wheel built from the tracked files, installed into a fresh venv outside the
checkout, runs train -> evaluate -> export -> predict from another directory, recipes found by name.

The fresh venv sees the test venv's site-packages through a .pth file (MindSpore and the rest are
already there; nothing is downloaded) and gets the wheel with `pip install --no-index`, so pip checks
the wheel's declared dependencies against what is installed."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


def _run(args, cwd, check=True, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(GLOG_v="3", HF_HUB_OFFLINE="1")
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the tracked files (what a clone has)."""
    d = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = d / "src"
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", d / "dist", src], d)
    (whl,) = (d / "dist").glob("ms_gpt4image-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory):
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run([sys.executable, "-m", "venv", venv], venv.parent)
    site = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     venv.parent).stdout.strip())
    (site / "deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", wheel], venv.parent)
    return venv


def test_the_wheel_declares_ranges_not_pins_and_carries_the_recipes(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    ms = [r for r in requires if r.startswith("mindspore")]
    assert ms == ["mindspore<2.11,>=2.3"], requires  # a range: the cluster's MindSpore (bound to its CANN) stays
    assert not any("==" in r.split(";")[0] for r in requires), requires
    assert any("extra == \"offline\"" in r and r.startswith("torch") for r in requires)
    assert "Requires-Python: <3.13,>=3.9" in meta
    shipped = {Path(n).name for n in names if n.startswith("ms_gpt4image/recipes/")}
    assert {p.name for p in (ROOT / "configs").rglob("*.yaml")} <= shipped
    assert "ms_gpt4image/tested_matrix.json" in names


def test_installed_package_trains_evaluates_exports_and_predicts_from_another_directory(fresh_venv, packed,
                                                                                           tmp_path):
    bin_ = fresh_venv / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([bin_ / "python", "-c", "import ms_gpt4image, export; print(ms_gpt4image.__file__, export.__file__)"],
                 work).stdout
    assert str(ROOT) not in where and str(fresh_venv) in where, where
    recipes = _run([bin_ / "gpt4image", "recipes"], work).stdout
    assert "imagenet_resnet50" in recipes and str(fresh_venv) in recipes
    sets = ["--set", f"data_dir={packed / 'data'}", "--set", "output_dir=run", "--set", "model_kwargs={width: 8}",
            "--set", "batch_size=16", "--set", "eval_batch_size=40", "--set", "epoch_size=1",
            "--set", "warmup_epochs=0"]
    _run([bin_ / "gpt4image", "train", "-c", "demo_fmnist", *sets], work)  # a shipped recipe, by name
    summary = json.loads((work / "run" / "summary.json").read_text())
    ev = json.loads(_run([bin_ / "gpt4image", "evaluate", "-c", "demo_fmnist", *sets, "--ckpt", "run/last.ckpt"],
                         work).stdout)
    assert ev["top1"] == pytest.approx(summary["final_top1"])
    ex = json.loads(_run([bin_ / "gpt4image", "export", "-c", "demo_fmnist", *sets, "--ckpt", "run/last.ckpt",
                          "--out", "deploy/net"], work).stdout)
    assert ex["max_abs_logit_diff"] <= 1e-4 and (work / "deploy" / "net.mindir").exists()
    p = _run([bin_ / "gpt4image", "predict", "--model", "deploy/net.mindir", "--data-dir", packed / "data",
              "--topk", "1"], work)
    assert len(p.stdout.strip().splitlines()) > 1
    doctor = _run([bin_ / "gpt4image", "doctor", "--no-run-check"], work).stdout
    assert "mindspore" in doctor and "ok" in doctor
    # the offline half's entry point is installed too (its commands import torch only when they run)
    assert "describe" in _run([bin_ / "gpt4image-export", "--help"], work).stdout
