"""A small CNN without batch statistics: its gradient on a batch split across devices equals the
gradient on the whole batch, which the data-parallel parity test needs (BatchNorm would differ)."""
import mindspore.nn as nn
from mindspore import Tensor

from .registry import register_backbone


class SimpleCNN(nn.Cell):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.features = nn.SequentialCell([
            nn.Conv2d(in_channels, width, 3, pad_mode="same", has_bias=True), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, pad_mode="same", has_bias=True), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, pad_mode="same", has_bias=True), nn.ReLU(),
        ])
        self.num_features = 4 * width
        self.classifier = nn.Dense(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x).mean(axis=(2, 3))

    def forward_head(self, f: Tensor) -> Tensor:
        return self.classifier(f)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def simple_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16, **kwargs):
    return SimpleCNN(num_classes, in_channels, width, **kwargs)
