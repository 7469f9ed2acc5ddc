"""Mixed precision (precision.mixed_precision): the network MindSpore's auto_mixed_precision returns is
the one trained, evaluated (raw and EMA weights alike), exported and run by predict. At O1/O2/O3 the
forward differs from O0 as MindSpore's lists say: O2 runs Conv/Dense in float16 and keeps BatchNorm in
float32, O3 runs everything in float16, O1 is refused
(MindSpore's rewrite converts nothing in these networks); the network's outputs and the losses are float32 at every level."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from ms_gpt4image import callbacks
from ms_gpt4image.checkpoint import save_deploy
from ms_gpt4image.config import load_config
from ms_gpt4image.deploy import build_backbone_from_spec
from ms_gpt4image.engine import NetWithLoss
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.losses import GPT4ImageLoss
from ms_gpt4image.models import create_backbone
from ms_gpt4image.precision import mixed_precision
from ms_gpt4image.train import build_eval_net, build_training

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode
KINDS = (nn.Conv2d, nn.Dense, nn.BatchNorm2d)
MANIFEST = {"num_classes": 10, "embedding": {"dim": 16}}


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # amp O1 writes its rewritten network's source into the working directory


def _image():
    return ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))


def _net():
    ms.set_seed(0)
    net = GPT4ImageNet(create_backbone("resnet18_cifar", num_classes=10, width=8), 16)
    for p in net.get_parameters():
        p.init_data()
    return net


def _record(net):
    """{cell kind: set of output dtypes}, and the first Conv2d's output, over one forward of `net`."""
    seen, first = {}, []

    def hook(kind):
        def record(cell, inputs, output):
            seen.setdefault(kind, set()).add(output.dtype)
            if kind == "Conv2d" and not first:
                first.append(output.astype(ms.float32).asnumpy())
        return record

    for _, cell in net.cells_and_names():
        for kind in KINDS:
            if type(cell) is kind:
                cell.register_forward_hook(hook(kind.__name__))
    out = net(_image())
    return seen, first[0], out


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_each_level_converts_what_mindspores_lists_say(level):
    ref_seen, ref_conv, ref_out = _record(mixed_precision(_net(), "O0"))
    seen, conv, out = _record(mixed_precision(_net(), level))
    f16, f32 = {ms.float16}, {ms.float32}
    assert ref_seen == {"Conv2d": f32, "Dense": f32, "BatchNorm2d": f32}
    want = {"O2": {"Conv2d": f16, "Dense": f16, "BatchNorm2d": f32},
            "O3": {"Conv2d": f16, "Dense": f16, "BatchNorm2d": f16}}[level]
    assert seen == want
    # the first convolution is computed in float16: close to O0's, not equal
    assert not np.array_equal(conv, ref_conv)
    np.testing.assert_allclose(conv, ref_conv, rtol=0, atol=2e-2)
    assert [o.dtype for o in out] == [ms.float32, ms.float32]  # logits, projection
    loss = NetWithLoss(mixed_precision(_net(), level), GPT4ImageLoss(0.3))(
        _image(), ms.Tensor(np.arange(2, dtype=np.int32)), ms.Tensor(np.eye(2, 16, dtype=np.float32)))
    assert all(v.dtype == ms.float32 and np.isfinite(v.asnumpy()) for v in loss)


def test_o1_converts_nothing_in_the_gpt4image_net_so_the_config_refuses_it():
    """MindSpore's O1 (mindspore.rewrite) does not enter the backbone's forward_features/forward_head: the
    returned network computes exactly O0's numbers. If a MindSpore release changes that, this fails:
    then O1 can be allowed again (config.validate)."""
    ref = mixed_precision(_net(), "O0")(_image())[0].asnumpy()
    got = mixed_precision(_net(), "O1")(_image())[0].asnumpy()
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="amp_level = O1 would train in float32"):
        load_config(overrides=["amp_level=O1"])


def _cfg(level, **extra):
    return load_config(overrides=[f"amp_level={level}", "model_kwargs={width: 8}", "ema=true"] +
                       [f"{k}={v}" for k, v in extra.items()])


def test_training_runs_the_network_auto_mixed_precision_returns():
    net, step, _ = build_training(_cfg("O2"), 4, MANIFEST)
    trained = step.network.net
    assert trained is not net  # the returned wrapper, which casts the outputs back to float32
    assert {p.name for p in trained.trainable_params()} == {p.name for p in net.trainable_params()}
    seen, _, out = _record(trained)
    assert seen["Conv2d"] == {ms.float16} and seen["BatchNorm2d"] == {ms.float32}
    assert [o.dtype for o in out] == [ms.float32, ms.float32]


def test_raw_and_ema_weights_are_evaluated_by_one_network_at_the_recipe_precision(monkeypatch, tmp_path):
    cfg = _cfg("O2")
    net, step, lr = build_training(cfg, 4, MANIFEST)
    eval_net = build_eval_net(cfg, 10)
    evaluated = []

    def fake_evaluate(model, data, world):
        seen, _, out = _record(model)
        evaluated.append((model, seen, out.dtype, model(_image()).asnumpy()))
        return {"top1": 50.0, "top5": 90.0, "count": 2}

    monkeypatch.setattr(callbacks, "evaluate", fake_evaluate)
    end = callbacks.EndOfEpoch(cfg, step, net, lr, None, eval_net, callbacks.World(), tmp_path, -1.0, {})
    scores = end._evaluate()
    assert set(scores) == {"top1", "top5", "top1_ema", "top5_ema"}
    (raw_net, raw_seen, raw_dtype, raw_logits), (ema_net, ema_seen, ema_dtype, ema_logits) = evaluated
    assert raw_net is ema_net is eval_net
    assert raw_seen == ema_seen == {"Conv2d": {ms.float16}, "Dense": {ms.float16}, "BatchNorm2d": {ms.float32}}
    assert raw_dtype == ema_dtype == ms.float32
    np.testing.assert_array_equal(raw_logits, ema_logits)  # no step yet: the EMA equals the weights


def test_evaluate_export_and_predict_build_the_deployed_net_at_the_spec_precision(tmp_path):
    backbone = create_backbone("resnet18_cifar", num_classes=10, width=8)
    save_deploy(backbone, tmp_path / "net.ckpt")
    spec = {"model": "resnet18_cifar", "model_kwargs": {"width": 8}, "num_classes": 10, "in_channels": 3,
            "image_size": 32}
    nets = {level: build_backbone_from_spec(dict(spec, amp_level=level), tmp_path / "net.ckpt") for level in ("O0", "O2")}
    nets["old spec"] = build_backbone_from_spec(spec, tmp_path / "net.ckpt")  # written before amp_level: float32
    seen = {k: _record(v)[0]["Conv2d"] for k, v in nets.items()}
    assert seen == {"O0": {ms.float32}, "O2": {ms.float16}, "old spec": {ms.float32}}
    assert nets["O2"](_image()).dtype == ms.float32
