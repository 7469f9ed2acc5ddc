"""mindcv models adapted to the backbone interface (pooled feature + head)."""
import mindspore.nn as nn
from mindspore import Tensor
from mindcv.models import create_model

from .registry import register_backbone


class MindcvBackbone(nn.Cell):
    """Wraps a mindcv classifier so that `forward_features` returns the pooled feature.

    mindcv's ResNet returns the spatial map from `forward_features` and pools in `forward_head`;
    ConvNeXt already pools (and norms) in `forward_features`. `pool_in_head` says which.
    """

    def __init__(self, model: nn.Cell, pool_in_head: bool):
        super().__init__()
        self.model = model
        self.pool_in_head = pool_in_head
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


def _mindcv(name: str, pool_in_head: bool, num_classes: int, in_channels: int = 3, **kwargs):
    # never pretrained=True (download URLs); released weights come in by path: config `pretrained_ckpt`
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, pretrained=False, **kwargs)
    return MindcvBackbone(model, pool_in_head)


@register_backbone
def resnet18(num_classes: int = 1000, **kwargs):
    return _mindcv("resnet18", True, num_classes, **kwargs)


@register_backbone
def resnet50(num_classes: int = 1000, **kwargs):
    return _mindcv("resnet50", True, num_classes, **kwargs)


@register_backbone
def convnext_tiny(num_classes: int = 1000, **kwargs):
    return _mindcv("convnext_tiny", False, num_classes, **kwargs)


@register_backbone
def convnext_small(num_classes: int = 1000, **kwargs):
    return _mindcv("convnext_small", False, num_classes, **kwargs)


@register_backbone
def convnext_base(num_classes: int = 1000, **kwargs):
    return _mindcv("convnext_base", False, num_classes, **kwargs)
