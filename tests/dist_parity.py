"""One training step per case, data-parallel over msrun workers or in a single process, for the parity
test: every case in one launch (one msrun, one process start and communicator for all of them).

  msrun --worker_num=2 ... tests/dist_parity.py --out DIR              (each rank: half the batch)
  python tests/dist_parity.py --out DIR --single                       (one process, whole batch)
  --cases clip,infonce                                                  (default: every case of CASES)

Single-process objective: clip -> the loss on the whole global batch (its negatives are global either
way); infonce -> the mean of the two halves' losses (its negatives are local by definition).
Writes DIR/CASE_{dist_rankR,single}.npz with the losses, every parameter after the step and its update.

Accumulation (tests/test_accumulation.py): `accumulate` cuts each process's rows into micro-batches;
`negatives: global` takes the alignment's negatives from the whole global batch (gradient caching);
`whole` makes the single process's objective the loss on the whole batch (infonce included).
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
# case -> (loss, the workers' options, the single process's): plain data parallel; 2 workers x 2 accumulated
# micro-batches = 1 process x 4 (infonce's negatives per micro-batch); gradient caching on 2 workers x 2
# = 1 process on the whole batch, for infonce and clip
CASES = {"clip": ("clip", {}, {}), "infonce": ("infonce", {}, {}),
         "infonce-accumulate": ("infonce", {"accumulate": 2}, {"accumulate": 4}),
         "infonce-global": ("infonce", {"accumulate": 2, "negatives": "global"}, {"whole": True}),
         "clip-global": ("clip", {"accumulate": 2, "negatives": "global"}, {"whole": True})}


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


def step(world, kind: str, accumulate: int = 1, negatives: str = "local", whole: bool = False) -> dict:
    """One step of a fresh net (the same initial weights on every rank) on this process's rows."""
    glob = negatives == "global"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
    t = rng.normal(size=(GLOBAL_BATCH, DIM)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    if world.distributed:
        b = GLOBAL_BATCH // world.size
        x, y, t = (v[world.rank * b:(world.rank + 1) * b] for v in (x, y, t))
        loss = GPT4ImageLoss(LAM, kind, TAU, world_size=world.size, rank=world.rank, global_negatives=glob)
    elif kind == "clip" or whole or accumulate > 1:
        loss = GPT4ImageLoss(LAM, kind, TAU, global_negatives=glob)
    else:
        loss = HalvesLoss(kind)
    ms.set_seed(0)  # identical initial weights on every rank, in every case
    net = GPT4ImageNet(create_backbone("simple_cnn", num_classes=10, width=8), DIM)
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.5, momentum=0.9)
    train = TrainStep(NetWithLoss(net, loss), opt, accumulate_steps=accumulate, global_negatives=glob)
    train.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    total, ce, align = train(ms.Tensor(x), ms.Tensor(y), ms.Tensor(t))
    after = {p.name: p.asnumpy() for p in net.trainable_params()}
    return dict(loss=float(total.asnumpy()), ce=float(ce.asnumpy()), align=float(align.asnumpy()),
                **{f"p:{k}": v for k, v in after.items()}, **{f"d:{k}": after[k] - before[k] for k in after})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--single", action="store_true")
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    world = init_distributed()
    for case in a.cases.split(","):
        kind, dist, single = CASES[case]
        name = "single" if not world.distributed else f"dist_rank{world.rank}"
        np.savez(Path(a.out) / f"{case}_{name}.npz", **step(world, kind, **(single if a.single else dist)))


if __name__ == "__main__":
    main()
