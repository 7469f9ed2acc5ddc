"""The training loop (mindspore.train.Model + callbacks.py) through the real command line."""
import json

import pytest

from conftest import run_cli, simple_cnn_config


def _log(tmp_path, name):
    return [json.loads(l) for l in (tmp_path / name / "log.jsonl").read_text().splitlines()]


def test_sink_mode_on_cpu_runs_the_same_steps(packed, tmp_path):
    """MindSpore cannot sink on CPU and runs the same loop unsunk: one config serves every target."""
    run_cli("-m", "ms_gpt4image", "train", "-c", simple_cnn_config(tmp_path, packed, "unsunk", dataset_sink_mode=False))
    run_cli("-m", "ms_gpt4image", "train", "-c", simple_cnn_config(tmp_path, packed, "sunk", dataset_sink_mode=True))
    for a, b in zip(_log(tmp_path, "unsunk"), _log(tmp_path, "sunk")):
        for key in ("loss", "ce", "align", "lr", "top1", "top5"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["epoch"], key)


def test_a_non_finite_loss_stops_the_run_naming_the_epoch_and_step(packed, tmp_path):
    # lr 1e38: the first update's weights overflow to inf (its gradients are finite, so it is applied), and
    # the next forward's loss is not finite (an update whose gradients are not finite would be skipped)
    p = run_cli("-m", "ms_gpt4image", "train", "-c", simple_cnn_config(tmp_path, packed, "nan", lr=1.0e+38), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "error: epoch 1: non-finite loss (first at step" in p.stderr and "of 5)" in p.stderr
    assert not (tmp_path / "nan" / "last.ckpt").exists()  # nothing saved from a diverged epoch


def test_model_loop_equals_a_bare_loop_over_the_same_pipeline(packed, tmp_path):
    from conftest import ROOT
    cfg = simple_cnn_config(tmp_path, packed, "parity", epoch_size=3)
    run_cli(ROOT / "tests" / "loop_parity.py", cfg, tmp_path / "parity.json")
    runs = json.loads((tmp_path / "parity.json").read_text())
    assert len(runs["model"]) == len(runs["bare"]) == 3
    for a, b in zip(runs["model"], runs["bare"]):
        for key in ("loss", "ce", "align", "top1"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["epoch"], key)
