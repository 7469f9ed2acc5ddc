"""One training step, data-parallel over msrun workers or in a single process, for the parity test.

  msrun --worker_num=2 ... tests/dist_parity.py --loss clip --out DIR     (each rank: half the batch)
  python tests/dist_parity.py --loss clip --out DIR --single              (one process, whole batch)

Single-process objective: clip -> the loss on the whole global batch (its negatives are global either
way); infonce -> the mean of the two halves' losses (its negatives are local by definition).
Writes DIR/{dist,single}.npz with the loss and every parameter after the step.

Accumulation (tests/test_accumulation.py): `--accumulate N` cuts each process's rows into N micro-batches;
`--negatives global` takes the alignment's negatives from the whole global batch (gradient caching);
`--whole` makes the single process's objective the loss on the whole batch (infonce included).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
import mindspore.nn as nn  # noqa: E402

from ms_gpt4image.distributed import init_distributed  # noqa: E402
from ms_gpt4image.engine import NetWithLoss, TrainStep  # noqa: E402
from ms_gpt4image.gpt4image import GPT4ImageNet  # noqa: E402
from ms_gpt4image.losses import GPT4ImageLoss  # noqa: E402
from ms_gpt4image.models import create_backbone  # noqa: E402

GLOBAL_BATCH, HALVES, DIM, LAM, TAU = 8, 2, 16, 0.5, 0.5


class HalvesLoss(nn.Cell):
    """CE on the whole batch + lambda * mean over halves of the local-negative alignment loss."""

    def __init__(self, kind):
        super().__init__()
        self.loss = GPT4ImageLoss(LAM, kind, TAU)

    def construct(self, logits, proj, label, text_emb):
        b = GLOBAL_BATCH // HALVES
        t1, c1, a1 = self.loss(logits[:b], proj[:b], label[:b], text_emb[:b])
        t2, c2, a2 = self.loss(logits[b:], proj[b:], label[b:], text_emb[b:])
        return 0.5 * (t1 + t2), 0.5 * (c1 + c2), 0.5 * (a1 + a2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", required=True, choices=["clip", "infonce"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--single", action="store_true")
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--negatives", default="local", choices=["local", "global"])
    ap.add_argument("--whole", action="store_true")
    a = ap.parse_args()
    glob = a.negatives == "global"
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)  # identical initial weights on every rank
    world = init_distributed()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
    t = rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    if world.distributed:
        b = GLOBAL_BATCH // world.size
        x, y, t = (v[world.rank * b:(world.rank + 1) * b] for v in (x, y, t))
        loss = GPT4ImageLoss(LAM, a.loss, TAU, world_size=world.size, rank=world.rank, global_negatives=glob)
    elif a.loss == "clip" or a.whole or a.accumulate > 1:
        loss = GPT4ImageLoss(LAM, a.loss, TAU, global_negatives=glob)
    else:
        loss = HalvesLoss(a.loss)
    net = GPT4ImageNet(create_backbone("simple_cnn", num_classes=10, width=8), DIM)
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.5, momentum=0.9)
    step = TrainStep(NetWithLoss(net, loss), opt, accumulate_steps=a.accumulate, global_negatives=glob)
    step.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    total, ce, align = step(ms.Tensor(x), ms.Tensor(y), ms.Tensor(t))
    after = {p.name: p.asnumpy() for p in net.trainable_params()}
    name = "single" if not world.distributed else f"dist_rank{world.rank}"
    np.savez(Path(a.out) / f"{name}.npz", loss=float(total.asnumpy()), ce=float(ce.asnumpy()),
             align=float(align.asnumpy()), **{f"p:{k}": v for k, v in after.items()},
             **{f"d:{k}": after[k] - before[k] for k in after})


if __name__ == "__main__":
    main()
