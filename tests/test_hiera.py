"""Hiera: a tiny random transformers Hiera (tests/make_hiera_models.py: classification, HieraModel and MAE,
in the transformers layout and the official facebookresearch/hiera one) converted by
`python -m ms_gpt4image convert --format hiera|hiera-hf` gives the same outputs in MindSpore; an MAE
checkpoint (no head) starts fine-tuning."""
import json

import numpy as np
import pytest

import mindspore as ms

from conftest import ROOT, run_cli
from ms_gpt4image.checkpoint import load_backbone
from ms_gpt4image.models import create_backbone

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode
TINY = {"embed_dim": 8, "stages": [1, 2, 2, 1]}  # heads 1, 2, 4, 8 as Hiera-T; 64 px: 16x16 tokens, 4 mask units


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("hiera")
    run_cli(ROOT / "tests" / "make_hiera_models.py", d, "--state-key", "model_state")  # the released files' key
    return d, np.load(d / "logits.npz")


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _convert(d, src, fmt, *extra):
    out = d / f"{src}.ckpt"
    if fmt == "hiera":  # no config in the official files: the architecture comes as model_kwargs
        extra = ("--model-kwargs", json.dumps(TINY), "--image-size", 64, *extra)
    report = json.loads(run_cli("-m", "ms_gpt4image", "convert", "--src", d / src, "--format", fmt,
                                "--model", "hiera_tiny_224", "--out", out, *extra).stdout)
    return out, report


@pytest.mark.parametrize("fmt,src", [("hiera-hf", "hf-cls"), ("hiera", "official-cls.pth"),
                                     ("hiera-hf", "hf-model"), ("hiera-hf", "hf-mae"), ("hiera", "official-mae.pth")])
def test_conversion_keeps_outputs(fixtures, fmt, src):
    d, ref = fixtures
    ckpt, report = _convert(d, src, fmt)
    assert report["image_size"] == 64 and report["model_kwargs"]["embed_dim"] == 8
    assert report["model_kwargs"]["stages"] == [1, 2, 2, 1]
    classifier = "cls" in src
    num_classes = 10 if classifier else 7
    net = create_backbone("hiera_tiny_224", num_classes=num_classes, image_size=64, **report["model_kwargs"])
    result = load_backbone(net, ckpt, strict=classifier)
    net.set_train(False)
    x = ms.Tensor(ref["x"])
    # the four stages' maps (rerolled to [B, H, W, C]) hold every layer's weights but the final norm and head
    for i, stage_map in enumerate(net.forward_intermediates(x)):
        _close(stage_map.asnumpy(), ref[f"stage{i + 1}"])
    if classifier:
        assert report["num_classes"] == 10 and "missing" not in report
        _close(net(x).asnumpy(), ref["logits"])  # logits, not the official eval-mode softmax
        _close(net.forward_features(x).asnumpy(), ref["pooled"])
    elif src == "hf-model":  # HieraModel: the pooler's norm, no classifier
        assert report["missing"] == ["head.bias", "head.weight"] and report["ignored"] == {}
        _close(net.forward_features(x).asnumpy(), ref["pooled"])
    else:  # MAE: no final norm, no head; the decoder and the encoder_norm are left out and counted
        assert report["missing"] == ["head.bias", "head.weight", "norm.beta", "norm.gamma"]
        assert report["ignored"]["encoder_norm"] == 2 and any(k.startswith("decoder") for k in report["ignored"])
        assert sorted(result["missing"]) == ["head.bias", "head.weight", "norm.beta", "norm.gamma"]


def test_mae_checkpoint_starts_fine_tuning(fixtures, packed, tmp_path):
    """pretrained_ckpt: an MAE conversion -> a new head (reported missing), the encoder loaded, training runs
    with layer-wise lr decay."""
    d, _ = fixtures
    ckpt, _ = _convert(d, "official-mae.pth", "hiera")
    cfg = tmp_path / "hiera.yaml"
    cfg.write_text(f"data_dir: {packed / 'data'}\noutput_dir: {tmp_path / 'run'}\nmodel: hiera_tiny_224\n"
                   f"model_kwargs: {json.dumps(TINY)}\npretrained_ckpt: {ckpt}\nimage_size: 64\ntransforms: imagenet\n"
                   "rrc_scale: [0.5, 1.0]\nbatch_size: 16\neval_batch_size: 16\nepoch_size: 1\nwarmup_epochs: 0\n"
                   "opt: adamw\nlr: 1.0e-3\nweight_decay: 0.05\nweight_decay_filter: norm_and_bias\nlayer_decay: 0.65\n")
    out = run_cli("-m", "ms_gpt4image", "train", "-c", cfg).stdout
    init = next(line for line in out.splitlines() if line.startswith("initialised from"))
    report = json.loads(init.split(": ", 1)[1])
    assert sorted(report["missing"]) == ["head.bias", "head.weight", "norm.beta", "norm.gamma"]
    assert report["unexpected"] == [] and report["shape_mismatch"] == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_top1"] is not None and np.isfinite(summary["final_top1"])


def test_conversion_errors_are_clear(fixtures, tmp_path):
    d, _ = fixtures
    # the official layout carries no architecture: without model_kwargs the shapes do not fit
    p = run_cli("-m", "ms_gpt4image", "convert", "--src", d / "official-cls.pth", "--format", "hiera",
                "--model", "hiera_tiny_224", "--out", tmp_path / "x.ckpt", check=False)
    assert p.returncode == 2 and "does not fit" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x.ckpt").exists()
    for bad in ("not json", "[1, 2]", '{"no_such_arg": 1}'):
        p = run_cli("-m", "ms_gpt4image", "convert", "--src", d / "hf-cls", "--format", "hiera-hf",
                    "--model", "hiera_tiny_224", "--model-kwargs", bad, "--out", tmp_path / "y.ckpt", check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr, (bad, p.stderr)
    p = run_cli("-m", "ms_gpt4image", "convert", "--src", d / "hf-cls", "--format", "hiera-hf",
                "--model", "deit_small", "--out", tmp_path / "z.ckpt", check=False)
    assert p.returncode == 2 and "not a Hiera backbone" in p.stderr
    p = run_cli("-m", "ms_gpt4image", "convert", "--src", tmp_path, "--format", "hiera-hf",
                "--model", "hiera_tiny_224", "--out", tmp_path / "w.ckpt", check=False)
    assert p.returncode == 2 and "no model.safetensors" in p.stderr
