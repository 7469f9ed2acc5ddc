"""Backbone registry: one `create_backbone` entry point, as in timm / mindcv.

A backbone is an `nn.Cell` with
  * `num_features`           -- width d of the pooled feature,
  * `forward_features(x)`    -- pooled feature [B, d],
  * `forward_head(f)`        -- logits [B, num_classes],
  * `construct(x)`           -- logits (so the backbone alone is the deployable net).
"""
import inspect
from typing import Callable, Dict, List

_BACKBONES: Dict[str, Callable] = {}


def register_backbone(fn: Callable) -> Callable:
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> List[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, num_classes: int, image_size: int = None, **kwargs):
    """`image_size` reaches only backbones whose shape depends on it (ViTs: position embeddings)."""
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    fn = _BACKBONES[name]
    if image_size is not None and "image_size" in inspect.signature(fn).parameters:
        kwargs["image_size"] = image_size
    try:
        return fn(num_classes=num_classes, **kwargs)
    except TypeError as e:  # a model_kwargs key this backbone does not take
        raise ValueError(f"backbone {name!r}: {e}; check model_kwargs") from None


# the residual blocks of the registered families: mindcv's ResNet (BasicBlock, Bottleneck), ConvNeXt and
# ViT/DeiT (Block), ours (HieraBlock, cifar_resnet's BasicBlock)
BLOCK_CLASSES = ("Block", "BasicBlock", "Bottleneck", "HieraBlock")


def recompute_blocks(backbone) -> int:
    """Marks every residual block of `backbone` for recomputation (MindSpore's `Cell.recompute()`: the
    backward recomputes the block's forward instead of keeping its activations); returns how many."""
    count = 0
    for _, cell in backbone.cells_and_names():
        if type(cell).__name__ in BLOCK_CLASSES:
            cell.recompute()
            count += 1
    if count == 0:
        raise ValueError(f"recompute: backbone {type(backbone).__name__} has no residual blocks "
                         f"({', '.join(BLOCK_CLASSES)}) to recompute; set recompute: false")
    return count
