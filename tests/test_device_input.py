"""uint8 training images normalised on the device (config device_normalize, device_input.py): the same
numbers as the float32 pipeline, only where the recipe allows it, and the same train-step loss."""
import numpy as np
import pytest

import mindspore as ms
import mindspore.nn as nn

from ms_gpt4image import augment as A
from ms_gpt4image.config import ConfigError, list_recipes, load_config
from ms_gpt4image.data import create_dataset, image_ops, load_manifest
from ms_gpt4image.device_input import DeviceNormalize, for_config, normalize_on_device
from ms_gpt4image.engine import NetWithLoss, TrainStep
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.losses import GPT4ImageLoss
from ms_gpt4image.models import create_backbone

RECIPES = {  # name: (config, overrides) on the tests' 28 px Fashion-MNIST-shaped data
    "small": (None, ["batch_size=16"]),  # the demo's: resize, pad-2 crop, flip
    "small-pad4-32px": (None, ["batch_size=16", "image_size=32", "crop_padding=4",  # CIFAR's crop
                               "mean=[0.4914,0.4822,0.4465]", "std=[0.2470,0.2435,0.2616]"]),
    # the ResNet-50 recipe's timm transforms, in a worker process as the recipe runs them
    "imagenet_resnet50": ("configs/imagenet_resnet50.yaml", ["batch_size=8", "image_size=32",
                                                              "num_parallel_workers=1"]),
    # ... with repeated augmentation (repeated_aug.py: the ops run in the batch op)
    "imagenet_resnet50-repeated-aug": ("configs/imagenet_resnet50.yaml", ["batch_size=8", "image_size=32",
                                                                           "num_parallel_workers=1", "repeated_aug=2"]),
}


def _first_batches(cfg, n=3):
    data, _ = create_dataset(cfg, "train")
    it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    return [next(it) for _ in range(n)]


def _cfg(packed, recipe, *more):
    path, overrides = RECIPES[recipe]
    return load_config(path, [f"data_dir={packed / 'data'}"] + overrides + list(more))


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_uint8_batch_normalised_on_the_device_is_the_float32_batch(packed, recipe):
    """Same seed, same draws: the uint8 pipeline stops before normalising (the crop pads the uint8 image
    with 0 in both), DeviceNormalize finishes on the device: equal to 1e-6."""
    uint8_cfg = _cfg(packed, recipe)
    assert uint8_cfg["device_normalize"] == "auto" and normalize_on_device(uint8_cfg)
    float_batches = _first_batches(_cfg(packed, recipe, "device_normalize=false"))
    uint8_batches = _first_batches(uint8_cfg)
    norm = DeviceNormalize(uint8_cfg["mean"], uint8_cfg["std"])
    for (fx, fy, ft), (ux, uy, ut) in zip(float_batches, uint8_batches):
        assert fx.dtype == np.float32 and ux.dtype == np.uint8 and ux.shape == fx.shape and ux.nbytes * 4 == fx.nbytes
        np.testing.assert_array_equal(uy, fy)
        np.testing.assert_array_equal(ut, ft)
        np.testing.assert_allclose(norm(ms.Tensor(ux)).asnumpy(), fx, rtol=0, atol=1e-6)
    if recipe.startswith("small"):  # the padded border is there, black, in both
        padded = (0 - np.asarray(uint8_cfg["mean"], np.float32)) / np.asarray(uint8_cfg["std"], np.float32)
        assert any(np.isclose(fx[:, c], padded[c], atol=1e-6).any() for fx, _, _ in float_batches for c in range(3))


def test_the_eval_split_stays_float32(packed):
    cfg = _cfg(packed, "small")
    image, _ = next(create_dataset(cfg, "eval")[0].create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert image.dtype == np.float32


@pytest.mark.parametrize("name", ["imagenet_deit_small", "imagenet_convnext_tiny", "imagenet_hiera_tiny"])
def test_erasing_and_mixup_recipes_stay_float32_and_refuse_true(name):
    cfg = load_config(name)
    assert not normalize_on_device(cfg) and for_config(cfg) is None
    assert image_ops(cfg, train=True)[1].normalize
    with pytest.raises(ConfigError, match=r"device_normalize = true, but random erasing \(re_prob = 0.25\) and "
                                          r"mixup/cutmix \(mixup = 0.8, cutmix = 1\) run after normalisation"):
        load_config(name, ["device_normalize=true"])
    with pytest.raises(ConfigError, match=r"but mixup/cutmix \(mixup = 0.8, cutmix = 1\) run"):
        load_config(name, ["device_normalize=true", "re_prob=0"])
    with pytest.raises(ConfigError, match=r"but random erasing \(re_prob = 0.25\) run"):
        load_config(name, ["device_normalize=true", "mixup=0", "cutmix=0"])
    with pytest.raises(ValueError, match="normalize=True"):
        A.TrainTransform(A.RandomResizedCrop(8), erasing=A.RandomErasing(0.25), normalize=False)


def test_which_shipped_recipes_send_uint8():
    on = {n for n in list_recipes() if normalize_on_device(load_config(n))}
    assert {"imagenet_resnet50", "imagenet_resnet50_authors", "cifar10_resnet18", "demo_fmnist"} <= on
    assert not {n for n in on if n.startswith(("imagenet_deit", "imagenet_convnext", "imagenet_hiera"))}
    assert not normalize_on_device(load_config("imagenet_resnet50", ["device_normalize=false"]))
    with pytest.raises(ConfigError, match="'device_normalize' = 'always': must be auto, true or false"):
        load_config(None, ["device_normalize=always"])


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=before)


def _step(dim, normalize=None):
    ms.set_seed(0)
    net = GPT4ImageNet(create_backbone("simple_cnn", num_classes=10, width=4), dim)
    step = TrainStep(NetWithLoss(net, GPT4ImageLoss(0.3), normalize), nn.Momentum(net.trainable_params(), 0.1, 0.9))
    step.set_train(True)
    return net, step


def test_train_step_on_the_uint8_batch_gives_the_float32_batch_loss(packed, mode):
    """Two steps of the same net on the pipeline's float32 batches and on its uint8 batches with
    DeviceNormalize in NetWithLoss: the same losses and weights. The normaliser has no parameters."""
    cfg = _cfg(packed, "small")
    dim = load_manifest(cfg["data_dir"])["embedding"]["dim"]
    floats = _first_batches(_cfg(packed, "small", "device_normalize=false"), 2)
    uint8s = _first_batches(cfg, 2)
    ref_net, ref = _step(dim)
    net, step = _step(dim, for_config(cfg))
    assert [p.name for p in step.network.get_parameters()] == [p.name for p in ref.network.get_parameters()]
    for f, u in zip(floats, uint8s):
        want = [float(v.asnumpy()) for v in ref(*map(ms.Tensor, f))]
        got = [float(v.asnumpy()) for v in step(*map(ms.Tensor, u))]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(net.trainable_params(), ref_net.trainable_params()):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
