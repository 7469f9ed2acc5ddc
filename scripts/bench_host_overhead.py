"""Benchmark: how much of a training epoch the host side costs, run by hand (not in the tests).

host efficiency = images/s of whole training epochs (`python -m ms_gpt4image train`: the input
pipeline, the loop, the logging) / images/s of bare train-step calls on the same net and batch
(one batch from the same pipeline, fed again and again, one host sync at the end). 1.0 means the loop
adds nothing to the step; a small net shows the host side most.

`--repo NAME=DIR` (repeatable) measures other checkouts of this project side by side, e.g. the
commit before the Model-based loop (`git worktree add /tmp/before a8a81ab`), alternating between
them so that they share the machine's load; medians over --repeats. Each measurement runs in its
own process with that checkout first on the path.

  .venv/bin/python scripts/bench_host_overhead.py --repo after=. --repo before=/tmp/before \\
      --net demo --data runs/demo-quick/data --net tiny --data runs/demo/data
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NETS = {  # --set overrides on configs/demo_fmnist.yaml
    "demo": ["model=resnet18_cifar", "model_kwargs={width: 16}"],  # the demo's net, batch 128
    "tiny": ["model=simple_cnn", "model_kwargs={width: 4}"],  # a net so small that the host side shows
}


def bare_steps(overrides, steps: int) -> float:
    """Images/s of `steps` back-to-back train-step calls on one real batch (runs in a child process)."""
    from ms_gpt4image.config import load_config
    from ms_gpt4image.data import create_dataset, load_manifest
    from ms_gpt4image.engine import setup_context
    from ms_gpt4image.train import build_training
    cfg = load_config("configs/demo_fmnist.yaml", overrides)
    setup_context(cfg)
    data, _ = create_dataset(cfg, "train")
    _, step, _ = build_training(cfg, data.get_dataset_size(), load_manifest(cfg["data_dir"]))
    step.set_train(True)
    batch = next(data.create_tuple_iterator(num_epochs=1))
    for _ in range(3):  # compile, warm up
        step(*batch)[0].asnumpy()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step(*batch)
    out[0].asnumpy()
    return steps * cfg["batch_size"] / (time.perf_counter() - t0)


def run(repo: Path, args, env) -> str:
    p = subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, args))} in {repo} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def measure(repo: Path, overrides, epochs: int, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), GLOG_v="3")
    with tempfile.TemporaryDirectory() as out:
        sets = [a for o in overrides + [f"output_dir={out}", f"epoch_size={epochs}", "eval_every=0"]
                for a in ("--set", o)]
        run(repo, ["-m", "ms_gpt4image", "train", "-c", "configs/demo_fmnist.yaml", *sets], env)
        log = [json.loads(l) for l in (Path(out) / "log.jsonl").read_text().splitlines()]
    epoch_ips = float(np.median([r["images_per_s"] for r in log[1:]]))  # epoch 1 compiles
    bare = float(run(repo, [str(Path(__file__).resolve()), "--bare", json.dumps(overrides), "--steps", str(steps)],
                     env).split()[-1])
    return {"epoch_images_per_s": epoch_ips, "bare_images_per_s": bare}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", action="append", default=[], metavar="NAME=DIR", help="checkouts to compare (default: this one)")
    ap.add_argument("--net", action="append", default=[], choices=sorted(NETS))
    ap.add_argument("--data", action="append", default=[], help="packed data dir for each --net, in order")
    ap.add_argument("--epochs", type=int, default=3, help="per training run; the first is left out")
    ap.add_argument("--steps", type=int, default=40, help="bare step calls per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--bare", default=None, help=argparse.SUPPRESS)  # child process: bare steps only
    a = ap.parse_args()
    if a.bare is not None:
        print(bare_steps(json.loads(a.bare), a.steps))
        return
    repos = dict(r.split("=", 1) for r in a.repo) if a.repo else {"this": "."}
    nets = a.net or ["demo"]
    if len(a.data) != len(nets):
        sys.exit("error: give one --data per --net")
    rows = []
    for net, data in zip(nets, a.data):
        overrides = NETS[net] + [f"data_dir={Path(data).resolve()}", "num_parallel_workers=2"]
        results = {name: [] for name in repos}
        for i in range(a.repeats):
            for name, repo in repos.items():  # alternate: both checkouts see the same load
                results[name].append(measure(Path(repo).resolve(), overrides, a.epochs, a.steps))
                print(f"{net} {name} run {i + 1}: {results[name][-1]}", file=sys.stderr)
        for name, runs in results.items():
            epoch = float(np.median([r["epoch_images_per_s"] for r in runs]))
            bare = float(np.median([r["bare_images_per_s"] for r in runs]))
            ratios = [r["epoch_images_per_s"] / r["bare_images_per_s"] for r in runs]
            rows.append({"net": net, "checkout": name, "epoch_images_per_s": round(epoch, 1),
                         "bare_step_images_per_s": round(bare, 1), "host_efficiency": round(float(np.median(ratios)), 3),
                         "ratios": [round(r, 3) for r in ratios]})
    print("| net | checkout | epoch images/s | bare step images/s | epoch / bare (median) | per run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['checkout']} | {r['epoch_images_per_s']} | {r['bare_step_images_per_s']} | "
              f"{r['host_efficiency']} | {', '.join(map(str, r['ratios']))} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
