"""Benchmark of the offline stage on this machine (run by hand; figures go into notes, not tests).

  .venv/bin/python scripts/bench_offline.py [--images 2000] [--out runs/bench_offline]

Reports, for Fashion-MNIST images (Debian dataset-fashion-mnist):
  describe images/s with the template backend and with a tiny random BLIP-2 (tests/make_tiny_blip2.py);
  embed descriptions/s through `run_embed` next to bare `model.encode` on the same texts (the ratio is
  the overhead of our code); pack and verify images/s. Each stage runs in its own process, as in use.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_v="3", PYTHONPATH=str(ROOT))

EMBED_SIDE_BY_SIDE = """
import json, sys, time
sys.path.insert(0, {root!r})
from export.embed import SentenceTransformerEncoder, load_descriptions, run_embed
texts = [r["description"] for r in load_descriptions({desc!r})]
enc = SentenceTransformerEncoder()
enc.model.encode(texts[:256], batch_size=256)  # warm-up
times = {{"bare": [], "ours": []}}
for _ in range(3):  # alternate, median of 3 each
    t0 = time.perf_counter()
    enc.model.encode(texts, batch_size=256, convert_to_numpy=True, show_progress_bar=False)
    times["bare"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    run_embed({desc!r}, {prefix!r}, enc, batch_size=256)
    times["ours"].append(time.perf_counter() - t0)
print(json.dumps({{k: sorted(v)[1] for k, v in times.items()}}))
"""


def timed(*args):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--vlm-images", type=int, default=64)
    ap.add_argument("--out", default="runs/bench_offline")
    a = ap.parse_args()
    out = ROOT / a.out
    subprocess.run(["rm", "-rf", str(out)])
    out.mkdir(parents=True)
    n = a.images
    r = {"images": n}
    s, _ = timed("-m", "export", "describe", "--limit", n, "--out", out / "desc.jsonl")
    r["describe_template_images_per_s"] = n / s
    timed(ROOT / "tests" / "make_tiny_blip2.py", out / "blip2")
    s, _ = timed("-m", "export", "describe", "--limit", a.vlm_images, "--backend", "blip2", "--model", out / "blip2",
                 "--batch-size", 16, "--out", out / "desc_blip2.jsonl")
    r["describe_tiny_blip2_images_per_s"] = a.vlm_images / s
    s, _ = timed("-m", "export", "embed", "--descriptions", out / "desc.jsonl", "--out", out / "emb")
    r["embed_command_descriptions_per_s"] = n / s  # the whole command: process start and model load included
    _, stdout = timed("-c", EMBED_SIDE_BY_SIDE.format(root=str(ROOT), desc=str(out / "desc.jsonl"),
                                                       prefix=str(out / "emb_side")))
    t = json.loads(stdout.strip().splitlines()[-1])
    r["embed_bare_encode_descriptions_per_s"] = n / t["bare"]
    r["embed_run_embed_descriptions_per_s"] = n / t["ours"]
    r["embed_overhead_ratio"] = t["ours"] / t["bare"]
    s, _ = timed("-m", "export", "pack", "--descriptions", out / "desc.jsonl", "--embeddings", out / "emb",
                 "--eval-limit", n, "--out", out / "data")
    r["pack_images_per_s"] = 2 * n / s  # train + eval
    s, _ = timed("-m", "export", "verify", out / "data")
    r["verify_images_per_s"] = 2 * n / s
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, indent=2))


if __name__ == "__main__":
    main()
