"""DeiT-S / DeiT-B (Touvron et al. 2021), not in mindcv: built on mindcv's VisionTransformer with
DeiT's exact settings (patch 16, dims 384/768, depth 12, heads 6/12, qkv bias, LayerNorm eps 1e-6,
cls token + learned position embedding, exact erf GELU as in timm: MindSpore's nn.GELU defaults to
the tanh approximation, which would shift converted PyTorch weights' logits by ~1e-3).
The pooled feature is the cls token after the final norm."""
from functools import partial

import mindspore.nn as nn
from mindspore import Tensor
from mindcv.models.vit import VisionTransformer

from .layer_ids import block_ordinals
from .registry import register_backbone


class DeiT(VisionTransformer):
    def __init__(self, embed_dim: int, num_heads: int, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, drop_path_rate: float = 0.1, **kwargs):
        super().__init__(image_size=image_size, patch_size=16, in_channels=in_channels, embed_dim=embed_dim,
                         depth=12, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, global_pool="token",
                         drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, epsilon=1e-6),
                         act_layer=partial(nn.GELU, approximate=False),
                         num_classes=num_classes, **kwargs)
        self.num_features = embed_dim

    def forward_features(self, x: Tensor) -> Tensor:
        return super().forward_features(x)[:, 0]  # cls token after the final norm

    def forward_head(self, f: Tensor) -> Tensor:
        return self.head(self.head_drop(f))

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False):
        """Layer ordinals for layer-wise lr decay (layer_ids.py)."""
        return block_ordinals(r"^(cls_token|pos_embed|patch_embed)", r"^blocks\.(\d+)\.")


@register_backbone
def deit_small(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return DeiT(384, 6, num_classes=num_classes, image_size=image_size, **kwargs)


@register_backbone
def deit_base(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return DeiT(768, 12, num_classes=num_classes, image_size=image_size, **kwargs)
