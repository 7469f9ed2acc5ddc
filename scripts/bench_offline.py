"""Benchmark of the offline stage on this machine (run by hand; figures go into notes, not tests).

  .venv/bin/python scripts/bench_offline.py [--images 2000] [--out runs/bench_offline]

Reports, for Fashion-MNIST images (Debian dataset-fashion-mnist):
  describe images/s with the template backend and with each VLM backend on a tiny random model
  (tests/make_tiny_vlms.py), and again with every image already in the description cache;
  embed descriptions/s through `run_embed` next to bare `model.encode` on the same texts (the ratio is
  the overhead of our code); pack and verify images/s; pack's peak anonymous memory for n and 16n images
  in 4 MB files (MindRecord indexes one file in memory at commit: the file size cap bounds memory). Each stage runs in its own process, as in use.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLM_BACKENDS = {"blip2": "blip2", "instructblip": "instructblip", "llava": "llava", "llava-next": "llava-next",
                "vlm": "idefics3"}  # describe backend -> tiny model built by tests/make_tiny_vlms.py
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_v="3", PYTHONPATH=str(ROOT))

EMBED_SIDE_BY_SIDE = """
import json, sys, time
sys.path.insert(0, {root!r})
from export.descriptions import DescriptionSet
from export.embed import SentenceTransformerEncoder, run_embed
ds = DescriptionSet({desc!r})
texts = ds.texts(0, len(ds))
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


# a VLM backend after loading (process start and model load excluded), then the same images again:
# every one is in the description cache
DESCRIBE_STEADY = """
import json, sys, time
sys.path.insert(0, {root!r})
from export.desc_cache import DescriptionCache
from export.describe import run_describe
from export.describers import create_describer
from export.readers import open_source
src = open_source("fashion-mnist")
d = create_describer({backend!r}, model={model!r})
run_describe(src, d, {out!r} + "_warm.jsonl", range(16), batch_size=16)
cache = DescriptionCache({out!r} + "_cache.sqlite")
times = {{}}
for name in ("fresh", "cached"):
    t0 = time.perf_counter()
    run_describe(src, d, {out!r} + "_" + name + ".jsonl", range({n}), batch_size=16, cache=cache)
    times[name] = time.perf_counter() - t0
print(json.dumps(times))
"""


PEAK_ANON_MB = {}


def _anon_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def timed(*args):
    """Runs one stage in its own process; returns (seconds, stdout) and keeps its peak anonymous RSS
    (polled every 10 ms; file-backed pages such as memory-mapped embeddings are left out)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, stdout=out, stderr=err)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _anon_mb(proc.pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{args} failed:\n{err.read()[-3000:]}")
        PEAK_ANON_MB[args] = peak
        return seconds, out.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--vlm-images", type=int, default=128)
    ap.add_argument("--out", default="runs/bench_offline")
    a = ap.parse_args()
    out = ROOT / a.out
    subprocess.run(["rm", "-rf", str(out)])
    out.mkdir(parents=True)
    n = a.images
    r = {"images": n}
    s, _ = timed("-m", "export", "describe", "--limit", n, "--out", out / "desc.jsonl")
    r["describe_template_images_per_s"] = n / s
    for backend, kind in VLM_BACKENDS.items():
        timed(ROOT / "tests" / "make_tiny_vlms.py", kind, out / kind)
        _, stdout = timed("-c", DESCRIBE_STEADY.format(root=str(ROOT), backend=backend, model=str(out / kind),
                                                        n=a.vlm_images, out=str(out / f"vlm_{backend}")))
        t = json.loads(stdout.strip().splitlines()[-1])
        r[f"describe_tiny_{backend}_images_per_s"] = a.vlm_images / t["fresh"]
        r[f"describe_tiny_{backend}_cached_images_per_s"] = a.vlm_images / t["cached"]
    s, _ = timed("-m", "export", "embed", "--descriptions", out / "desc.jsonl", "--out", out / "emb")
    r["embed_command_descriptions_per_s"] = n / s  # the whole command: process start and model load included
    _, stdout = timed("-c", EMBED_SIDE_BY_SIDE.format(root=str(ROOT), desc=str(out / "desc.jsonl"),
                                                       prefix=str(out / "emb_side")))
    t = json.loads(stdout.strip().splitlines()[-1])
    r["embed_bare_encode_descriptions_per_s"] = n / t["bare"]
    r["embed_run_embed_descriptions_per_s"] = n / t["ours"]
    r["embed_overhead_ratio"] = t["ours"] / t["bare"]
    pack1 = ("-m", "export", "pack", "--descriptions", out / "desc.jsonl", "--embeddings", out / "emb",
             "--eval-limit", n, "--out", out / "data")
    s, _ = timed(*pack1)
    r["pack_images_per_s"] = 2 * n / s  # train + eval
    s, _ = timed("-m", "export", "verify", out / "data")
    r["verify_images_per_s"] = 2 * n / s
    # bounded memory: pack n and 16n training images into 4 MB files (embeddings imported from a random
    # tensor) and compare pack's peak anonymous memory
    timed("-c", f"import numpy as np; np.save({str(out / 'rand.npy')!r}, "
                f"np.random.default_rng(0).standard_normal((60000, 384)).astype('float32'))")
    for m in (n, 16 * n):
        timed("-m", "export", "describe", "--limit", m, "--cache", "none", "--out", out / f"desc{m}.jsonl")
        timed("-m", "export", "import-embeddings", "--src", out / "rand.npy", "--descriptions",
              out / f"desc{m}.jsonl", "--out", out / f"emb{m}", "--normalize")
        args = ("-m", "export", "pack", "--descriptions", out / f"desc{m}.jsonl", "--embeddings", out / f"emb{m}",
                "--eval-limit", 10, "--max-shard-mb", 4, "--out", out / f"data{m}")
        _, stdout = timed(*args)
        r[f"pack_{m}_images_files"] = json.loads(stdout)["train"]["files"]
        r[f"pack_{m}_images_peak_anon_mb"] = PEAK_ANON_MB[args]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, indent=2))


if __name__ == "__main__":
    main()
