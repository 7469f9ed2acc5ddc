"""Mixed precision: the one place that builds the precision-converted network.

`mindspore.amp.auto_mixed_precision(net, level)` returns the network to run: at O1 a rewritten copy of
the network's class (the same Parameter objects), at O2/O3 the converted net wrapped in `_OutputTo32`,
which casts its outputs back to float32 (measured with MindSpore 2.7.2; the conversion also touches the
net passed in, but at O2/O3 that net's outputs stay float16, and only the return value is the
documented contract). Training, evaluation of the raw and the EMA weights, export and predict all run
the network this module returns, so every number a run reports is computed at the recipe's precision.

What each level converts (MindSpore's lists, `mindspore.amp`): O2 everything but the black list
(BatchNorm, LayerNorm stay float32), O3 everything, in float16; the parameters stay float32. O1 (the
white list: Conv, Dense, ... in float16) is built by `mindspore.rewrite`, which parses the network's
Python source and does not enter cells called through methods: GPT4ImageNet calls its backbone's
`forward_features` / `forward_head`, so at O1 MindSpore 2.7.2 converts nothing and the run trains in
float32 (measured: outputs identical to O0's; tests/test_precision.py). The config refuses O1.
"""
import mindspore as ms
import mindspore.nn as nn

LEVELS = ("O0", "O1", "O2", "O3")


def mixed_precision(net: nn.Cell, level: str) -> nn.Cell:
    """The network to run at `level` (O0: `net` itself). Build it once per network, after its weights
    are loaded: the returned network shares `net`'s Parameter objects and names."""
    if level not in LEVELS:
        raise ValueError(f"amp_level must be one of {', '.join(LEVELS)}, got {level!r}")
    if level == "O0":
        return net
    return ms.amp.auto_mixed_precision(net, level)
