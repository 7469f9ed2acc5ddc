"""Layer-wise lr decay (config `layer_decay`, mindcv's param groups): the rate each parameter gets."""
import pytest

import mindspore as ms

from ms_gpt4image.config import ConfigError, load_config
from ms_gpt4image.gpt4image import GPT4ImageNet
from ms_gpt4image.models import create_backbone
from ms_gpt4image.train import build_optimizer

MS_MODE = ms.PYNATIVE_MODE  # set around each test by conftest._ms_mode
DECAY = 0.5


def _rates(model, **kwargs):
    """{param name: (lr scale, weight decay)} of the optimizer train.py builds (base lr 1)."""
    cfg = load_config(None, [f"model={model}", "opt=adamw", f"layer_decay={DECAY}", "weight_decay=0.05",
                             "weight_decay_filter=norm_and_bias"])
    net = GPT4ImageNet(create_backbone(model, num_classes=10, image_size=32, **kwargs), 16)
    opt = build_optimizer(cfg, net, [1.0, 1.0])
    return {p.name: (float(opt.group_lr[i].learning_rate.asnumpy()[0]), opt.group_weight_decay[i])
            for i, p in enumerate(opt.parameters)}


def _scale(layer, last):
    return DECAY ** (last - layer)


@pytest.mark.parametrize("model,depth,kwargs", [("hiera_tiny_224", 12, {"embed_dim": 8}), ("deit_small", 12, {})])
def test_transformer_layers_as_mae(model, depth, kwargs):
    """Stem layer 0, block i layer i + 1, final norm + head + projector layer depth + 1 (full rate)."""
    rates = _rates(model, **kwargs)
    last = depth + 1
    for name, (lr, wd) in rates.items():
        short = name.removeprefix("backbone.")
        if short.startswith(("patch_embed", "pos_embed", "cls_token")):
            want = _scale(0, last)
        elif short.startswith("blocks."):
            want = _scale(int(short.split(".")[1]) + 1, last)
        else:
            assert short.startswith(("norm", "head", "projector")), name
            want = 1.0
        assert lr == pytest.approx(want, rel=1e-6), name
    # no decay on 1-D parameters and on the position embedding / class token
    one_d = {n for n, p in _params(model, **kwargs).items() if p.ndim == 1 or n.endswith(("pos_embed", "cls_token"))}
    assert {n for n, (_, wd) in rates.items() if wd == 0.0} == one_d
    assert rates["backbone.blocks.11.attn.qkv.weight"][1] == 0.05


def _params(model, **kwargs):
    net = GPT4ImageNet(create_backbone(model, num_classes=10, image_size=32, **kwargs), 16)
    return {p.name: p for p in net.trainable_params()}


def test_convnext_layers_per_block_and_downsampling():
    rates = _rates("convnext_tiny")
    # stem, then stage i's downsampling and blocks in order: 1 + (3) + (1 + 3) + (1 + 9) + (1 + 3) = 22 layers
    layers = sorted({lr for lr, _ in rates.values()})
    assert len(layers) == 23 and layers[-1] == 1.0
    assert rates["backbone.model.feature.0.0.weight"][0] == pytest.approx(_scale(0, 22))
    assert rates["backbone.model.feature.2.1.weight"][0] == pytest.approx(_scale(4, 22))  # downsampling into stage 1
    assert rates["backbone.model.feature.7.2.dwconv.weight"][0] == pytest.approx(_scale(21, 22))  # last block
    assert rates["backbone.model.classifier.weight"][0] == 1.0


def test_resnet_layers_per_block():
    rates = _rates("resnet18")
    assert rates["backbone.model.conv1.weight"][0] == pytest.approx(_scale(0, 9))
    assert rates["backbone.model.layer1.0.conv1.weight"][0] == pytest.approx(_scale(1, 9))
    assert rates["backbone.model.layer4.1.conv2.weight"][0] == pytest.approx(_scale(8, 9))
    assert rates["backbone.model.classifier.weight"][0] == rates["projector.net.0.weight"][0] == 1.0


def test_off_by_default_and_refused_where_it_cannot_work():
    cfg = load_config(None, ["opt=adamw"])
    assert cfg["layer_decay"] is None
    net = GPT4ImageNet(create_backbone("simple_cnn", num_classes=10), 16)
    opt = build_optimizer(cfg, net, [1.0, 1.0])
    assert not opt.is_group_lr
    with pytest.raises(ValueError, match="no layer ids"):
        build_optimizer(load_config(None, ["model=simple_cnn", "layer_decay=0.7"]), net, [1.0])
    with pytest.raises(ConfigError, match="auto"):
        load_config(None, ["layer_decay=0.7", "weight_decay_filter=auto"])
    with pytest.raises(ConfigError, match="layer_decay"):
        load_config(None, ["layer_decay=1.5"])
