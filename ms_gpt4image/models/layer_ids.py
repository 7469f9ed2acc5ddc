"""Layer ordinals for layer-wise learning-rate decay (mindcv's `param_groups_layer_decay`, as timm's).

A backbone that supports `layer_decay` has `group_matcher(coarse=False)` returning a function from a
parameter name to an ordinal tuple; mindcv numbers the distinct ordinals 0..L in sorted order and scales
layer i's rate by layer_decay ** (L - i). Ordinals here follow MAE / BEiT: the stem is layer 0, block i
is layer i + 1, and everything else (final norm, head; in GPT4ImageNet the projector too) is the last
layer, trained at the full rate. `last_layer_with_head` moves the last block into that layer, as the
Hiera v0.2.0 fine-tuning code numbers its layers (get_layer_id: stem 0, block i -> i + 1, the rest
num_layers = depth, so the last block shares the head's scale).
"""
import re
from typing import Callable, Iterable, Tuple

LAST = (float("inf"),)


def block_ordinals(stem: str, blocks: str) -> Callable[[str], Tuple[float, ...]]:
    """stem: regex of the stem's names -> (0,); blocks: regex whose groups number a block -> (1, *groups)."""
    stem_re, blocks_re = re.compile(stem), re.compile(blocks)

    def ordinal(name: str) -> Tuple[float, ...]:
        if stem_re.match(name):
            return (0.0,)
        m = blocks_re.match(name)
        return (1.0, *map(float, m.groups())) if m else LAST

    return ordinal


def mindcv_convnext_ordinal(name: str) -> Tuple[float, ...]:
    """mindcv ConvNeXt (`model.feature.K.J.*`): K = 0 the stem, K = 2i the downsampling into stage i
    (one layer), K = 2i + 1 stage i with block J; the final norm and classifier are last."""
    m = re.match(r"model\.feature\.(\d+)\.(\d+)\.", name)
    if not m:
        return LAST
    k, j = int(m[1]), int(m[2])
    return (0.0,) if k == 0 else (1.0, float(k), float(j if k % 2 else 0))


def last_layer_with_head(ordinal: Callable[[str], Tuple[float, ...]],
                         names: Iterable[str]) -> Callable[[str], Tuple[float, ...]]:
    """`ordinal` with the highest layer below LAST (among `names`) mapped to LAST."""
    top = max((o for o in map(ordinal, names) if o != LAST), default=None)
    return lambda name: LAST if ordinal(name) == top else ordinal(name)
