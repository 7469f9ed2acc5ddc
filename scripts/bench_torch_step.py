"""PyTorch reference for scripts/bench_train_step.py --torch: train-step images/s of the transformers
Hiera (HieraForImageClassification, random weights from a config: nothing is downloaded) with the same
step as the MindSpore bench's lambda = 0 arm: forward, cross-entropy, backward, SGD momentum 0.9.
torch only (never in a MindSpore process). Prints one JSON line.

Usage: python scripts/bench_torch_step.py --model hiera_tiny_224 --size 224 --batch 8 --steps 10
"""
import argparse
import json
import time

import numpy as np
import torch
from transformers import HieraConfig, HieraForImageClassification

# embed dim, heads per stage, depths: the Hiera paper's sizes (as in ms_gpt4image/models/hiera.py)
CONFIGS = {"hiera_tiny_224": (96, [1, 2, 4, 8], [1, 2, 7, 2]), "hiera_small_224": (96, [1, 2, 4, 8], [1, 2, 11, 2]),
           "hiera_base_224": (96, [1, 2, 4, 8], [2, 3, 16, 3])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="hiera_tiny_224", choices=sorted(CONFIGS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dim, heads, depths = CONFIGS[a.model]
    net = HieraForImageClassification(HieraConfig(embed_dim=dim, num_heads=heads, depths=depths,
                                                  image_size=[a.size, a.size], num_labels=10))
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, a.batch))
    times = []
    for i in range(a.steps + 1):  # the first step warms up the allocator
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(pixel_values=x).logits, y)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"model": a.model, "framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
                      "batch": a.batch, "input": a.size, "steps": a.steps,
                      "images_per_s": round(a.batch / float(np.median(times)), 2)}))


if __name__ == "__main__":
    main()
