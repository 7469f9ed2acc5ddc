from .registry import create_backbone, list_backbones, recompute_blocks, register_backbone
from . import cifar_resnet, deit, hiera, mindcv_backbones, simple_cnn  # noqa: F401  (register the backbones)

__all__ = ["create_backbone", "list_backbones", "recompute_blocks", "register_backbone"]
