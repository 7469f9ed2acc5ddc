"""mindcv models adapted to the backbone interface (pooled feature + head)."""
from typing import Callable

import mindspore.nn as nn
from mindspore import Tensor
from mindcv.models import create_model
from mindcv.models.convnext import Block as ConvNeXtBlock

from .layer_ids import block_ordinals, mindcv_convnext_ordinal
from .registry import register_backbone


class MindcvBackbone(nn.Cell):
    """Wraps a mindcv classifier so that `forward_features` returns the pooled feature.

    mindcv's ResNet returns the spatial map from `forward_features` and pools in `forward_head`;
    ConvNeXt already pools (and norms) in `forward_features`. `pool_in_head` says which.
    """

    def __init__(self, model: nn.Cell, pool_in_head: bool, layer_ordinal: Callable):
        super().__init__()
        self.model = model
        self.pool_in_head = pool_in_head
        self.layer_ordinal = layer_ordinal
        # ConvNeXt has no `num_features`; the classifier's input width is the feature width
        self.num_features = model.classifier.in_channels

    def forward_features(self, x: Tensor) -> Tensor:
        f = self.model.forward_features(x)
        if self.pool_in_head:
            f = f.mean(axis=(2, 3))
        return f

    def forward_head(self, f: Tensor) -> Tensor:
        if self.pool_in_head:
            return self.model.classifier(f)
        return self.model.forward_head(f)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False):
        """Layer ordinals for layer-wise lr decay (layer_ids.py)."""
        return self.layer_ordinal


def _mindcv(name: str, pool_in_head: bool, layer_ordinal: Callable, num_classes: int, in_channels: int = 3,
            **kwargs):
    # never pretrained=True (download URLs); released weights come in by path: config `pretrained_ckpt`
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, pretrained=False, **kwargs)
    return MindcvBackbone(model, pool_in_head, layer_ordinal)


def _resnet(name: str, num_classes: int, torch_maxpool: bool = False, **kwargs):
    """torch_maxpool: pad the stem max-pool by 1 on every side as torchvision does (mindcv uses
    'same' padding, which pads only bottom/right): needed for weights converted from PyTorch."""
    net = _mindcv(name, True, block_ordinals(r"^model\.(conv1|bn1)\.", r"^model\.layer(\d+)\.(\d+)\."),
                  num_classes, **kwargs)
    if torch_maxpool:
        net.model.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
    return net


def _convnext(name: str, num_classes: int, **kwargs):
    net = _mindcv(name, False, mindcv_convnext_ordinal, num_classes, **kwargs)
    for _, cell in net.cells_and_names():  # exact erf GELU, as the official ConvNeXt (mindcv: tanh approx.)
        if isinstance(cell, ConvNeXtBlock):
            cell.act = nn.GELU(approximate=False)
    return net


@register_backbone
def resnet18(num_classes: int = 1000, **kwargs):
    return _resnet("resnet18", num_classes, **kwargs)


@register_backbone
def resnet50(num_classes: int = 1000, **kwargs):
    return _resnet("resnet50", num_classes, **kwargs)


@register_backbone
def convnext_tiny(num_classes: int = 1000, **kwargs):
    return _convnext("convnext_tiny", num_classes, **kwargs)


@register_backbone
def convnext_small(num_classes: int = 1000, **kwargs):
    return _convnext("convnext_small", num_classes, **kwargs)


@register_backbone
def convnext_base(num_classes: int = 1000, **kwargs):
    return _convnext("convnext_base", num_classes, **kwargs)
