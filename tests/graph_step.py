"""One graph-mode training step of every registered backbone at 32 px, then its eval forward (feature,
logits, head) and a MindIR export of the trained backbone and its reload (tests/test_models.py). Prints one
JSON line per backbone: the losses, which weights changed, the forward's shapes, and how far the head's and
the reloaded MindIR's logits are from the network's."""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
import mindspore.nn as nn  # noqa: E402
from mindspore.common import initializer  # noqa: E402

from ms_gpt4image.engine import NetWithLoss, TrainStep  # noqa: E402
from ms_gpt4image.gpt4image import GPT4ImageNet  # noqa: E402
from ms_gpt4image.losses import GPT4ImageLoss  # noqa: E402
from ms_gpt4image.models import create_backbone, list_backbones  # noqa: E402


# Hiera-L/H at full width would need ~11 GB for one Momentum step; narrowed, they keep their heads, four
# stages, q-pooling and mask-unit layout (the code paths) with a fraction of the weights, and 6 instead of 36
# blocks in stage 3 (Hiera's variants differ only in these numbers; 36 blocks took 2/3 of their compile time).
# Hiera-B/B+ keep their widths with 6 instead of 16 blocks in stage 3 (21 s instead of 31 s each, step and
# export). Hiera-S at 6 blocks would be Hiera-T, so it keeps its 11.
SMALL_KWARGS = {"resnet18_cifar": {"width": 8}, "hiera_large_224": {"embed_dim": 48, "stages": (2, 6, 6, 4)},
                "hiera_huge_224": {"embed_dim": 32, "stages": (2, 6, 6, 4)},
                "hiera_base_224": {"stages": (2, 3, 6, 3)}, "hiera_base_plus_224": {"stages": (2, 3, 6, 3)}}


def numpy_truncated_normal(seed, arr, a, b, mean, sigma):
    """MindSpore's truncated-normal fill (11 M values/s here; ConvNeXt and the ViTs draw every weight
    with it; most of the 47 s this script spent building models) by NumPy's normal generator (115 M/s), with the same
    absolute bounds [a, b]: the step's checks do not depend on which draws the weights are."""
    rng = np.random.default_rng(seed)
    rng.standard_normal(arr.shape, dtype=np.float32, out=arr)
    arr *= sigma
    arr += mean
    outside = (arr < a) | (arr > b)
    while outside.any():
        arr[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32) * sigma + mean
        outside = (arr < a) | (arr > b)


def eval_forward_and_mindir(backbone, x) -> dict:
    """In eval mode, op by op (PyNative): the feature's and the logits' shapes, max |forward_head(feature)
    - logits|; then max |logits(MindIR reloaded) - logits|. (A graph-mode call for the reference logits
    would compile the forward a third time, besides the export and the reload: a fifth of this script.)"""
    backbone.set_train(False)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    feature = backbone.forward_features(x)
    want = backbone(x).asnumpy()
    head = backbone.forward_head(feature).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    with tempfile.TemporaryDirectory() as tmp:
        ms.export(backbone, x, file_name=str(Path(tmp) / "net"), file_format="MINDIR")
        got = nn.GraphCell(ms.load(str(Path(tmp) / "net.mindir")))(x).asnumpy()
    return {"feature_shape": list(feature.shape), "num_features": backbone.num_features,
            "logits_shape": list(want.shape), "head_max_abs_diff": float(np.abs(head - want).max()),
            "mindir_max_abs_diff": float(np.abs(got - want).max())}


def main():
    initializer._truncated_normal = numpy_truncated_normal
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    t = rng.normal(size=(4, 16)).astype(np.float32)
    t = ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True))
    for name in sys.argv[1:] or list_backbones():
        net = GPT4ImageNet(create_backbone(name, num_classes=10, image_size=32, **SMALL_KWARGS.get(name, {})), 16)
        step = TrainStep(NetWithLoss(net, GPT4ImageLoss(0.3)), nn.Momentum(net.trainable_params(), 0.01, 0.9))
        step.set_train(True)
        before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
        losses = [float(v.asnumpy()) for v in step(x, y, t)]
        changed = [p.name for p in net.trainable_params() if not np.array_equal(before[p.name], p.asnumpy())]
        print(json.dumps({"backbone": name, "losses": losses, "changed": changed, "params": list(before),
                          **eval_forward_and_mindir(net.backbone, x)}), flush=True)


if __name__ == "__main__":
    main()
