"""Hiera (Ryali et al., ICML 2023, arXiv 2306.00989): a hierarchical ViT without the bells and whistles.

The architecture of the official facebookresearch/hiera code, in MindSpore:
  * 7x7 stride-4 patch embedding + absolute position embedding;
  * tokens "unrolled" once per q-pool stride, so that a 2x2 max-pool of the token map and a mask unit
    (an 8x8 window of tokens) are both contiguous slices of the sequence: pooling is a max over one
    axis and windowed attention is a reshape;
  * mask-unit attention (attention inside each window) in stages 1-2, global attention in 3-4;
  * q-pooling at the first block of stages 2-4: the queries and the projected residual are max-pooled
    2x2, which halves the resolution and doubles the width (and the heads);
  * head: mean of the tokens -> LayerNorm -> Linear (official: softmax at eval; ours returns logits).

Parameter names follow the official ones (patch_embed.proj, pos_embed, blocks.N.norm1/attn.qkv/
attn.proj/norm2/mlp.fc1/mlp.fc2/proj, norm) with MindSpore's LayerNorm leaves (gamma/beta) and the
head's Linear as `head` (official: head.projection); `convert --format hiera|hiera-hf` maps onto them.
"""
import inspect
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, Tensor
from mindspore.common import initializer as init
from mindcv.models.layers import DropPath
from mindcv.models.layers.mlp import Mlp

from .layer_ids import block_ordinals
from .registry import register_backbone


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm((dim,), epsilon=1e-6)


class PatchEmbed(nn.Cell):
    """Strided convolution -> tokens [B, H*W, C] in raster order."""

    def __init__(self, in_channels: int, dim: int, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, tuple(kernel), tuple(stride), pad_mode="pad",
                              padding=(padding[0], padding[0], padding[1], padding[1]), has_bias=True)

    def construct(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return x.reshape(x.shape[0], x.shape[1], -1).swapaxes(1, 2)


class MaskUnitAttention(nn.Cell):
    """Attention within each mask unit (window) or, with use_mask_unit_attn=False, over all tokens.
    With q_stride > 1 the queries are max-pooled over the q_stride unrolled sub-grids first."""

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int = 1, window_size: int = 0,
                 use_mask_unit_attn: bool = False):
        super().__init__()
        self.dim_out, self.heads, self.q_stride = dim_out, heads, q_stride
        self.head_dim = dim_out // heads
        self.scale = self.head_dim ** -0.5
        self.window_size, self.use_mask_unit_attn = window_size, use_mask_unit_attn
        self.qkv = nn.Dense(dim, 3 * dim_out)
        self.proj = nn.Dense(dim_out, dim_out)

    def construct(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        windows = n // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        # token index = t * windows + w (unroll puts the window index fastest)
        qkv = self.qkv(x).reshape(b, n // windows, windows, 3, self.heads, self.head_dim)
        qkv = qkv.transpose(3, 0, 4, 2, 1, 5)  # [3, B, heads, windows, tokens, head_dim]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.q_stride > 1:
            q = q.reshape(b, self.heads, windows, self.q_stride, -1, self.head_dim).max(axis=3)
        attn = ops.softmax(ops.matmul(q * self.scale, k.swapaxes(-1, -2)), axis=-1)
        out = ops.matmul(attn, v)  # [B, heads, windows, tokens_out, head_dim]
        out = out.transpose(0, 3, 2, 1, 4).reshape(b, -1, self.dim_out)
        return self.proj(out)


class HieraBlock(nn.Cell):
    def __init__(self, dim: int, dim_out: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 q_stride: int = 1, window_size: int = 0, use_mask_unit_attn: bool = False):
        super().__init__()
        self.dim, self.dim_out, self.q_stride = dim, dim_out, q_stride
        self.norm1 = _layer_norm(dim)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn)
        self.norm2 = _layer_norm(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=lambda: nn.GELU(approximate=False))
        self.drop_path = DropPath(drop_path)
        if dim != dim_out:  # first block of a stage: the residual is projected (and pooled with the queries)
            self.proj = nn.Dense(dim, dim_out)

    def construct(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.dim != self.dim_out:
            x = self.proj(x_norm)
            if self.q_stride > 1:
                x = x.reshape(x.shape[0], self.q_stride, -1, self.dim_out).max(axis=1)
        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Cell):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, embed_dim: int = 96,
                 num_heads: int = 1, stages: Sequence[int] = (2, 3, 16, 3), q_pool: int = 3,
                 q_stride: Sequence[int] = (2, 2), mask_unit_size: Sequence[int] = (8, 8),
                 mask_unit_attn: Sequence[bool] = (True, True, False, False), dim_mul: float = 2.0,
                 head_mul: float = 2.0, patch_kernel: Sequence[int] = (7, 7), patch_stride: Sequence[int] = (4, 4),
                 patch_padding: Sequence[int] = (3, 3), mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 head_dropout: float = 0.0, head_init_scale: float = 0.001):
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.tokens_shape = [s // p for s, p in zip(size, patch_stride)]
        # every q-pool halves the token map and the unrolled mask units must still tile it
        multiple = [p * m for p, m in zip(patch_stride, mask_unit_size)]
        if any(s % m for s, m in zip(size, multiple)) or q_pool >= len(stages):
            raise ValueError(f"hiera: image_size {image_size} must be a multiple of {multiple[0]} "
                             f"(patch stride x mask unit), and q_pool {q_pool} < {len(stages)} stages")
        self.q_stride = tuple(q_stride)
        self.q_pool = q_pool
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        self.unroll_schedule = [self.q_stride] * (len(stages) - 1)
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed = Parameter(init.initializer(init.TruncatedNormal(0.02),
                                                    (1, math.prod(self.tokens_shape), embed_dim), ms.float32),
                                   name="pos_embed")

        flat_mu, flat_q = math.prod(mask_unit_size), math.prod(q_stride)
        q_pool_blocks = [end + 1 for end in self.stage_ends[:q_pool]]
        dpr = np.linspace(0, drop_path_rate, sum(stages)).tolist()
        blocks, stage, dim = [], 0, embed_dim
        for i in range(sum(stages)):
            dim_out = dim
            # the official code reads the attention kind before moving to the next stage, so the first
            # block of a stage keeps the previous stage's mask-unit attention (stage 3's first block too)
            use_mask_unit_attn = mask_unit_attn[stage]
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = int(dim * dim_mul), int(num_heads * head_mul), stage + 1
                if i in q_pool_blocks:
                    flat_mu //= flat_q
            blocks.append(HieraBlock(dim, dim_out, num_heads, mlp_ratio, dpr[i],
                                     flat_q if i in q_pool_blocks else 1, flat_mu, use_mask_unit_attn))
            dim = dim_out
        self.blocks = nn.CellList(blocks)
        self.num_features = dim
        self.norm = _layer_norm(dim)
        self.head_drop = nn.Dropout(p=head_dropout) if head_dropout > 0 else nn.Identity()
        self.head = nn.Dense(dim, num_classes)
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float, init_bias: float = 0.02) -> None:
        """As the official code: trunc-normal(0.02) weights, Linear and LayerNorm biases 0.02, the head
        scaled by head_init_scale (small logits at the start of fine-tuning)."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, (nn.Dense, nn.Conv2d)):
                cell.weight.set_data(init.initializer(init.TruncatedNormal(0.02), cell.weight.shape, ms.float32))
                bias = init_bias if isinstance(cell, nn.Dense) else 0.0
                cell.bias.set_data(init.initializer(init.Constant(bias), cell.bias.shape, ms.float32))
            elif isinstance(cell, nn.LayerNorm):
                cell.beta.set_data(init.initializer(init.Constant(init_bias), cell.beta.shape, ms.float32))
        self.head.weight.set_data(init.initializer(init.TruncatedNormal(0.02 * head_init_scale),
                                                   self.head.weight.shape, ms.float32))
        self.head.bias.set_data(init.initializer(init.Constant(init_bias * head_init_scale), self.head.bias.shape,
                                                 ms.float32))

    def unroll(self, x: Tensor) -> Tensor:
        """[B, H*W, C] in raster order -> the same tokens ordered so that each q-pool stride's sub-grid
        is a contiguous block: [B, (sy, sx) per stride ..., H', W', C] flattened."""
        b, _, c = x.shape
        size = list(self.tokens_shape)
        x = x.reshape(b, size[0], size[1], c)
        for sy, sx in self.unroll_schedule:
            size = [size[0] // sy, size[1] // sx]
            x = x.reshape(-1, size[0], sy, size[1], sx, c).transpose(0, 2, 4, 1, 3, 5)
            x = x.reshape(-1, size[0], size[1], c)  # the strides move into the batch axis
        return x.reshape(b, -1, c)

    def reroll(self, x: Tensor, stage: int) -> Tensor:
        """A stage's output tokens -> its spatial map [B, H, W, C] (inverse of the unroll still in effect)."""
        b, n, c = x.shape
        pooled = min(stage, self.q_pool)
        schedule = self.unroll_schedule[pooled:]
        size = [s // q ** pooled for s, q in zip(self.tokens_shape, self.q_stride)]
        unit = [1, 1]
        for sy, sx in schedule:
            x = x.reshape(b, sy, sx, n // (sy * sx), unit[0], unit[1], c).transpose(0, 3, 1, 4, 2, 5, 6)
            unit = [unit[0] * sy, unit[1] * sx]
            x = x.reshape(b, -1, unit[0], unit[1], c)
            n = x.shape[1]
        grid = [size[0] // unit[0], size[1] // unit[1]]  # mask units left in raster order
        x = x.reshape(b, grid[0], grid[1], unit[0], unit[1], c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, size[0], size[1], c)

    def _tokens(self, x: Tensor) -> Tensor:
        return self.unroll(self.patch_embed(x) + self.pos_embed)

    def forward_intermediates(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The four stages' outputs as spatial maps [B, H_s, W_s, C_s] (for dense tasks and inspection)."""
        x = self._tokens(x)
        maps = ()
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                maps += (self.reroll(x, self.stage_ends.index(i)),)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x.mean(axis=1))  # pooled, normalised: the GPT4Image projector's input

    def forward_head(self, f: Tensor) -> Tensor:
        return self.head(self.head_drop(f))  # logits: no softmax, unlike the official eval-mode head

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self):
        return ["pos_embed"]

    def group_matcher(self, coarse: bool = False):
        """Layer ordinals for layer-wise lr decay (layer_ids.py)."""
        return block_ordinals(r"^(patch_embed|pos_embed)", r"^blocks\.(\d+)\.")


_VARIANTS = {  # embed dim, initial heads, blocks per stage (Hiera paper Table 2)
    "tiny": (96, 1, (1, 2, 7, 2)),
    "small": (96, 1, (1, 2, 11, 2)),
    "base": (96, 1, (2, 3, 16, 3)),
    "base_plus": (112, 2, (2, 3, 16, 3)),
    "large": (144, 2, (2, 6, 36, 4)),
    "huge": (256, 4, (2, 6, 36, 4)),
}


def architecture(model: str) -> Dict:
    """The full architecture kwargs of a registered Hiera variant (Hiera's defaults + the variant's)."""
    variant = model[len("hiera_"):-len("_224")] if model.startswith("hiera_") and model.endswith("_224") else None
    if variant not in _VARIANTS:
        raise ValueError(f"{model!r} is not a Hiera backbone; choose one of "
                         f"{', '.join(f'hiera_{v}_224' for v in _VARIANTS)}")
    params = inspect.signature(Hiera.__init__).parameters
    arch = {k: p.default for k, p in params.items() if k not in ("self", "num_classes", "in_channels", "image_size")}
    embed_dim, heads, stages = _VARIANTS[variant]
    return dict(arch, embed_dim=embed_dim, num_heads=heads, stages=stages)


def _hiera(variant: str, num_classes: int, image_size: int, **kwargs) -> Hiera:
    embed_dim, heads, stages = _VARIANTS[variant]
    arch = dict(embed_dim=embed_dim, num_heads=heads, stages=stages)
    arch.update(kwargs)  # model_kwargs may override the architecture (converted tiny models, experiments)
    return Hiera(num_classes=num_classes, image_size=image_size, **arch)


@register_backbone
def hiera_tiny_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("tiny", num_classes, image_size, **kwargs)


@register_backbone
def hiera_small_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("small", num_classes, image_size, **kwargs)


@register_backbone
def hiera_base_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("base", num_classes, image_size, **kwargs)


@register_backbone
def hiera_base_plus_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("base_plus", num_classes, image_size, **kwargs)


@register_backbone
def hiera_large_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("large", num_classes, image_size, **kwargs)


@register_backbone
def hiera_huge_224(num_classes: int = 1000, image_size: int = 224, **kwargs):
    return _hiera("huge", num_classes, image_size, **kwargs)
