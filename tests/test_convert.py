"""PyTorch checkpoints -> MindSpore: random PyTorch models built in the test (tests/make_torch_models.py),
converted by `python -m ms_gpt4image convert`, must give the same logits in MindSpore."""
import json

import numpy as np
import pytest

import mindspore as ms

from conftest import ROOT, run_cli
from ms_gpt4image.checkpoint import load_backbone
from ms_gpt4image.gpt4image import Projector
from ms_gpt4image.models import create_backbone

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("torch_models")
    run_cli(ROOT / "tests" / "make_torch_models.py", d)
    return d, np.load(d / "logits.npz")


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def _convert(d, src, fmt, model, *extra):
    out = d / f"{src}.ckpt"
    report = json.loads(run_cli("-m", "ms_gpt4image", "convert", "--src", d / src, "--format", fmt, "--model", model,
                                "--image-size", 64, "--out", out, *extra).stdout)
    return out, report


@pytest.mark.parametrize("fmt,model", [("torchvision", "resnet18"), ("torchvision", "resnet50"),
                                       ("timm", "deit_small"), ("convnext", "convnext_tiny")])
def test_backbone_conversion_keeps_logits(torch_models, fmt, model):
    d, ref = torch_models
    name = f"{fmt}-{model}"
    fmt_name = {"torchvision": "torchvision-resnet", "timm": "timm-deit", "convnext": "convnext"}[fmt]
    ckpt, report = _convert(d, f"{name}.pth", fmt_name, model)
    assert report["num_classes"] == 10
    net = create_backbone(model, num_classes=10, image_size=64, **report["model_kwargs"])
    load_backbone(net, ckpt, strict=True)
    net.set_train(False)
    _close(net(ms.Tensor(ref["x"])).asnumpy(), ref[name])


@pytest.mark.parametrize("src,fmt,model,extra", [
    ("gpt4image-resnet50.pth.tar", "gpt4image-resnet", "resnet50", ()),
    ("gpt4image-deit_small.pth", "gpt4image-deit", "deit_small", ("--unsafe-pickle",))])
def test_authors_checkpoints_convert_backbone_and_projector(torch_models, src, fmt, model, extra):
    d, ref = torch_models
    ckpt, report = _convert(d, src, fmt, model, *extra)
    p = report["projector"]
    assert p["projector"] == "mlp" and p["text_dim"] == 32 and p["mlp_bn"] == ("resnet" in fmt)
    net = create_backbone(model, num_classes=10, image_size=64, **report["model_kwargs"])
    load_backbone(net, ckpt, strict=True)
    net.set_train(False)
    x = ms.Tensor(ref["x"])
    backbone_ref = "torchvision-resnet50" if "resnet" in fmt else "timm-deit_small"
    _close(net(x).asnumpy(), ref[backbone_ref])
    proj = Projector(net.num_features, 32, "mlp", p["mlp_bn"])
    params = {k[len("projector."):]: v for k, v in ms.load_checkpoint(str(ckpt)).items() if k.startswith("projector.")}
    assert not ms.load_param_into_net(proj, params)[0]
    proj.set_train(False)
    _close(proj(net.forward_features(x)).asnumpy(), ref[f"{src.split('.')[0]}-proj"])


def test_conversion_errors_are_clear(torch_models, tmp_path):
    d, _ = torch_models
    p = run_cli("-m", "ms_gpt4image", "convert", "--src", d / "gpt4image-deit_small.pth", "--format", "gpt4image-deit",
                "--model", "deit_small", "--image-size", 64, "--out", tmp_path / "x.ckpt", check=False)
    assert p.returncode != 0 and "--unsafe-pickle" in p.stderr  # pickled argparse.Namespace refused by default
    p = run_cli("-m", "ms_gpt4image", "convert", "--src", d / "torchvision-resnet18.pth", "--format",
                "torchvision-resnet", "--model", "resnet50", "--out", tmp_path / "y.ckpt", check=False)
    assert p.returncode != 0 and "does not fit" in p.stderr
    assert not (tmp_path / "y.ckpt").exists()
