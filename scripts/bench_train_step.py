"""Benchmark: MindSpore CPU speed on this machine, run by hand (`make bench`), not in the tests.

1. A 3x3 convolution on a 64x64x16x16 tensor: mindspore 2.9/2.10 take ~2 s here against ~0.02 s
   for 2.7.x (shared/FACTS.md). Exits non-zero above --conv-limit so a bad version bump is caught.
2. Train-step images/s for each backbone (--models, default resnet18_cifar; `all` = every registered
   one) with lambda = 0 and lambda = 0.3, measured alternately in one process (median of N steps
   each), so the ratio is the cost of the alignment branch.
3. --torch: the same step of the transformers port in PyTorch (scripts/bench_torch_step.py, its own
   process) at the same input size and batch, run right after; the ratio MindSpore / PyTorch is the
   framework cost on this machine (Hiera only: the reference exists for hiera_tiny/small/base_224).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import mindspore as ms
import mindspore.nn as nn


def conv_seconds(repeats: int = 5) -> float:
    conv = nn.Conv2d(16, 16, 3, pad_mode="same")
    x = ms.Tensor(np.random.default_rng(0).normal(size=(64, 16, 64, 64)).astype(np.float32))
    conv(x).asnumpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        conv(x).asnumpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_model(name, a, GPT4ImageNet, GPT4ImageLoss, NetWithLoss, TrainStep, create_backbone):
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 10, a.batch).astype(np.int32))
    t = rng.normal(size=(a.batch, 384)).astype(np.float32)
    t = ms.Tensor(t / np.linalg.norm(t, axis=1, keepdims=True))
    steps = {}
    for lam in (0.0, 0.3):
        kwargs = {"width": a.width} if name == "resnet18_cifar" else {}
        net = GPT4ImageNet(create_backbone(name, num_classes=10, image_size=a.size, **kwargs), 384)
        opt = nn.Momentum(net.trainable_params(), 0.01, 0.9)
        steps[lam] = TrainStep(NetWithLoss(net, GPT4ImageLoss(lam)), opt)
        steps[lam].set_train(True)
        steps[lam](x, y, t)[0].asnumpy()  # compile
    times = {0.0: [], 0.3: []}
    for _ in range(a.steps):
        for lam, step in steps.items():  # alternate so both arms see the same machine load
            t0 = time.perf_counter()
            step(x, y, t)[0].asnumpy()
            times[lam].append(time.perf_counter() - t0)
    ips = {lam: a.batch / float(np.median(v)) for lam, v in times.items()}
    return {"model": name, "images_per_s_lambda0": round(ips[0.0], 1), "images_per_s_lambda0.3": round(ips[0.3], 1),
            "alignment_cost_ratio": round(ips[0.0] / ips[0.3], 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet18_cifar", help="comma-separated backbone names, or all")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch (transformers) step of each model")
    ap.add_argument("--conv-limit", type=float, default=0.5, help="seconds; above this the run fails")
    a = ap.parse_args(argv)
    sys.path.insert(0, ".")
    from ms_gpt4image.engine import NetWithLoss, TrainStep
    from ms_gpt4image.gpt4image import GPT4ImageNet
    from ms_gpt4image.losses import GPT4ImageLoss
    from ms_gpt4image.models import create_backbone

    ms.set_context(mode=ms.PYNATIVE_MODE)
    conv = conv_seconds()
    ms.set_context(mode=ms.GRAPH_MODE)
    from ms_gpt4image.models import list_backbones
    names = list_backbones() if a.models == "all" else a.models.split(",")
    rows = [bench_model(name, a, GPT4ImageNet, GPT4ImageLoss, NetWithLoss, TrainStep, create_backbone) for name in names]
    if a.torch:
        for r in rows:
            cmd = [sys.executable, str(Path(__file__).with_name("bench_torch_step.py")), "--model", r["model"],
                   "--size", str(a.size), "--batch", str(a.batch), "--steps", str(a.steps)]
            ref = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            r["torch_images_per_s"] = ref["images_per_s"]
            r["mindspore_over_torch"] = round(r["images_per_s_lambda0"] / ref["images_per_s"], 3)
    result = {"mindspore": ms.__version__, "conv3x3_64x16x64x64_s": round(conv, 4), "batch": a.batch,
              "input": a.size, "steps": a.steps, "models": rows}
    print(json.dumps(result, indent=2))
    print("| backbone | images/s, lambda 0 | images/s, lambda 0.3 | ratio | PyTorch images/s | MindSpore / PyTorch |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['images_per_s_lambda0']} | {r['images_per_s_lambda0.3']} | {r['alignment_cost_ratio']} "
              f"| {r.get('torch_images_per_s', '')} | {r.get('mindspore_over_torch', '')} |")
    if conv > a.conv_limit:
        print(f"FAIL: conv took {conv:.3f} s > {a.conv_limit} s: is mindspore >= 2.9 installed?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
