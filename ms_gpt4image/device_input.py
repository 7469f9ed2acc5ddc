"""uint8 training images, normalised on the device (config `device_normalize`).

The training pipeline's last host step is normalisation, (x / 255 - mean) / std, which turns a uint8
image into float32: four times the bytes through the Python worker processes' shared memory and over
the host-to-device link. Where nothing after normalisation needs float on the host, the pipeline can
stop before it and send the crop as uint8 CHW; `DeviceNormalize` then computes
(x - 255 mean) / (255 std) in float32 on the device, inside the train step (engine.NetWithLoss).

Where the recipe allows it (config.device_normalize_blockers):
* `transforms: small` (Decode, Resize, RandomCrop with padding, flip, then Rescale + Normalize +
  HWC2CHW): the crop pads the uint8 image with 0 before normalising, so normalising after it on the
  device gives the same numbers (the padded pixels become -mean / std either way);
* `transforms: imagenet` without random erasing (augment.TrainTransform stops before its normalisation:
  crop, flip, RandAugment / colour jitter all work on uint8 PIL images);
* with repeated augmentation too (repeated_aug.py stacks whatever the ops return).
Not where the references do something after normalisation that uint8 cannot hold: random erasing
(`re_prob` > 0: timm 0.3.2 fills boxes with N(0, 1) noise in the normalised scale) and mixup/cutmix
(mixed pixels are fractions). Those recipes (DeiT, ConvNeXt, Hiera) stay float32. The eval split stays
float32 too: its ops are shared with `predict` and `export`.
"""
from typing import Dict, Optional, Sequence

import numpy as np

import mindspore as ms
import mindspore.nn as nn

from .config import device_normalize_blockers


def normalize_on_device(cfg: Dict) -> bool:
    """Whether the training images go to the device as uint8: `device_normalize` true, or auto where
    nothing blocks it (config.validate refuses true where something does)."""
    mode = cfg["device_normalize"]
    if mode == "auto":
        return not device_normalize_blockers(cfg)
    return bool(mode)


class DeviceNormalize(nn.Cell):
    """[B, C, H, W] uint8 -> (x - 255 mean) * (1 / (255 std)) as float32, the arithmetic of
    augment.TrainTransform's host normalisation (same constants, same two float32 operations). A
    float image passes through unchanged (it is normalised already: the float32 pipelines)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.shift = ms.Tensor((255 * np.asarray(mean, np.float32)).reshape(1, -1, 1, 1))
        self.scale = ms.Tensor((1 / (255 * np.asarray(std, np.float32))).reshape(1, -1, 1, 1))

    def construct(self, image):
        if image.dtype == ms.uint8:
            return (image.astype(ms.float32) - self.shift) * self.scale
        return image


def for_config(cfg: Dict) -> Optional[DeviceNormalize]:
    """The normaliser the train step needs (engine.NetWithLoss's `normalize`), None for float pipelines."""
    return DeviceNormalize(cfg["mean"], cfg["std"]) if normalize_on_device(cfg) else None


def bytes_per_image(cfg: Dict, train: bool = True) -> int:
    """Bytes of one image as the pipeline hands it on (to the device, and through shared memory)."""
    uint8 = train and normalize_on_device(cfg)
    return 3 * cfg["image_size"] ** 2 * (1 if uint8 else 4)
