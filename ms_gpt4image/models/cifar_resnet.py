"""CIFAR-style ResNet (3x3 stem, stride 1, no max-pool) for 28-32 px inputs.

mindcv's ResNet hard-codes the ImageNet stem and a width of 64, so the stem and stage widths are ours;
the residual block is mindcv's `BasicBlock`.
"""
from typing import Sequence

import mindspore.nn as nn
from mindspore import Tensor
from mindspore.common import initializer as init
from mindcv.models.resnet import BasicBlock

from .registry import register_backbone


class CifarResNet(nn.Cell):
    def __init__(self, layers: Sequence[int], num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, pad_mode="pad", padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, channels_in = [], width
        for i, depth in enumerate(layers):
            channels, stride = width * 2 ** i, 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                down = None
                if j == 0 and (stride != 1 or channels_in != channels):
                    down = nn.SequentialCell([nn.Conv2d(channels_in, channels, 1, stride=stride),
                                              nn.BatchNorm2d(channels)])
                blocks.append(BasicBlock(channels_in, channels, stride=stride if j == 0 else 1, down_sample=down))
                channels_in = channels
            stages.append(nn.SequentialCell(blocks))
        self.stages = nn.SequentialCell(stages)
        self.num_features = channels_in
        self.classifier = nn.Dense(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.weight.set_data(init.initializer(init.HeNormal(mode="fan_out", nonlinearity="relu"),
                                                      cell.weight.shape, cell.weight.dtype))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        return x.mean(axis=(2, 3))

    def forward_head(self, f: Tensor) -> Tensor:
        return self.classifier(f)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64, **kwargs):
    """ResNet-18 for small images (He et al. CIFAR variant); `width` scales every stage (64 = standard)."""
    return CifarResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)
