"""The GPT4Image training net: backbone + projector W. Only the backbone is deployed."""
import mindspore.nn as nn
from mindspore import Tensor
from mindspore.common.initializer import TruncatedNormal, initializer

from .models.layer_ids import LAST, last_layer_with_head

PROJECTORS = ("linear", "mlp")


def _trunc_normal_dense(cell: nn.Dense):
    cell.weight.set_data(initializer(TruncatedNormal(0.02), cell.weight.shape, cell.weight.dtype))


class Projector(nn.Cell):
    """Maps the pooled d-dim image feature into the k-dim text-embedding space.

    linear: the paper's W (k x d, no bias).
    mlp:    the authors' code: Linear(d, 2k, no bias) -> BN -> ReLU -> Linear(2k, k);
            `mlp_bn=False` is their DeiT variant: Linear(d, 2k, with bias) -> ReLU -> Linear(2k, k).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", mlp_bn: bool = True):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"align.projector must be one of {PROJECTORS}, got {kind!r}")
        if kind == "linear":
            layers = [nn.Dense(in_dim, out_dim, has_bias=False)]
        else:
            layers = [nn.Dense(in_dim, 2 * out_dim, has_bias=not mlp_bn)]
            if mlp_bn:
                layers.append(nn.BatchNorm1d(2 * out_dim))
            layers += [nn.ReLU(), nn.Dense(2 * out_dim, out_dim)]
        for layer in layers:
            if isinstance(layer, nn.Dense):
                _trunc_normal_dense(layer)
        self.net = nn.SequentialCell(layers)

    def construct(self, f: Tensor) -> Tensor:
        return self.net(f)


class GPT4ImageNet(nn.Cell):
    """(logits, W f) in training; `deploy_net()` is the backbone alone (features + classifier)."""

    def __init__(self, backbone: nn.Cell, text_dim: int, projector: str = "linear", mlp_bn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = Projector(backbone.num_features, text_dim, projector, mlp_bn)
        self.layer_ids = "mae"  # or "hiera": group_matcher puts the last block in the head's layer

    def construct(self, x: Tensor):
        f = self.backbone.forward_features(x)
        return self.backbone.forward_head(f), self.projector(f)

    def no_weight_decay(self):
        """Names excluded from weight decay by mindcv's `norm_and_bias` filter (ViT: pos_embed, cls_token)."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else ()
        return {f"backbone.{n}" for n in names}

    def group_matcher(self, coarse: bool = False):
        """Layer ordinals for mindcv's layer-wise lr decay: the backbone's (models/layer_ids.py); the
        projector is new, like the head, so it is in the last layer (full rate). With `layer_ids`
        "hiera", the backbone's last block joins that layer too (Hiera v0.2.0's get_layer_id)."""
        inner = self.backbone.group_matcher(coarse)
        matcher = lambda name: inner(name[len("backbone."):]) if name.startswith("backbone.") else LAST  # noqa: E731
        if self.layer_ids == "hiera":
            matcher = last_layer_with_head(matcher, [p.name for p in self.trainable_params()])
        return matcher

    def deploy_net(self) -> nn.Cell:
        return self.backbone
