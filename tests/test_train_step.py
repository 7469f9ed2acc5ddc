"""TrainStep: loss scaling (fixed, dynamic with overflow skipping), the weight EMA and the device-side log."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from ms_gpt4image.engine import NetWithLoss, TrainStep
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.losses import GPT4ImageLoss
from ms_gpt4image.models import create_backbone
from ms_gpt4image.precision import mixed_precision

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode


def _batch():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 16)).astype(np.float32)
    return (ms.Tensor(rng.normal(size=(4, 3, 16, 16)).astype(np.float32)), ms.Tensor(np.arange(4, dtype=np.int32)),
            ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True)))


def _step(scale_sense=None, ema_decay=0.0):
    ms.set_seed(0)
    net = GPT4ImageNet(create_backbone("simple_cnn", num_classes=10, width=4), 16)
    step = TrainStep(NetWithLoss(net, GPT4ImageLoss(0.3)), nn.Momentum(net.trainable_params(), 0.1, 0.9),
                     scale_sense, ema_decay=ema_decay)
    step.set_train(True)
    return net, step


def _weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


@pytest.mark.parametrize("scale", [ms.Tensor(1024.0), nn.DynamicLossScaleUpdateCell(2.0 ** 12, 2, 1000)])
def test_loss_scaling_gives_the_unscaled_update(scale):
    ref_net, ref = _step()
    ref(*_batch())
    net, step = _step(scale)
    step(*_batch())
    want, got = _weights(ref_net), _weights(net)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_dynamic_loss_scale_skips_overflowing_steps():
    net, step = _step(nn.DynamicLossScaleUpdateCell(3.0e38, 2, 1000))
    before = _weights(net)
    step(*_batch())  # gradients x 3e38 overflow float32: no update, scale halved
    after = _weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert float(step.scale_sense.asnumpy()) == pytest.approx(1.5e38)


def test_the_log_is_summed_on_the_device_and_names_the_first_non_finite_step():
    net, step = _step()
    outs = [[float(v.asnumpy()) for v in step(*_batch())] for _ in range(3)]
    log = step.read_log()
    assert log["steps"] == 3 and log["first_nonfinite_step"] == 0
    for i, key in enumerate(("loss", "ce", "align")):
        assert log[key] == pytest.approx(np.mean([o[i] for o in outs]), rel=1e-6)
    assert step.read_log()["steps"] == 0  # read_log resets
    image, label, text = _batch()
    step(image, label, text)
    step(image, label, text * float("nan"))  # step 2 of this interval: the alignment term is NaN
    step(image, label, text)
    log = step.read_log(reset=False)
    assert log["steps"] == 3 and log["first_nonfinite_step"] == 2 and not np.isfinite(log["align"])
    assert step.read_log(reset=False) == pytest.approx(log, nan_ok=True)  # reset=False keeps it


def test_ema_is_the_moving_average_of_the_weights():
    net, step = _step(ema_decay=0.5)
    want = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    for _ in range(3):
        step(*_batch())
        want = {k: 0.5 * v + 0.5 * p.asnumpy() for (k, v), p in zip(want.items(), net.get_parameters())}
    ema = {p.name[len("ema."):]: p.asnumpy() for p in step.ema_weights}
    assert set(ema) == set(want)  # every parameter, BatchNorm statistics included
    for k in want:
        np.testing.assert_allclose(ema[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_mixed_precision_step_with_dynamic_loss_scale(level):
    ms.set_seed(0)
    net = GPT4ImageNet(create_backbone("resnet18_cifar", num_classes=10, width=8), 16)
    step = TrainStep(NetWithLoss(mixed_precision(net, level), GPT4ImageLoss(0.3)),
                     nn.Momentum(net.trainable_params(), 0.1, 0.9),
                     nn.DynamicLossScaleUpdateCell(1024.0, 2, 1000))
    step.set_train(True)
    before = _weights(net)
    out = step(*_batch())
    assert all(v.dtype == ms.float32 for v in out)  # the losses are computed in float32
    assert all(np.isfinite([float(v.asnumpy()) for v in out]))
    assert not np.array_equal(before["backbone.classifier.weight"], net.backbone.classifier.weight.asnumpy())
