"""Benchmark of the offline stage on this machine (run by hand; figures go into notes, not tests).

  .venv/bin/python scripts/bench_offline.py [--images 2000] [--out runs/bench_offline]

Reports, for Fashion-MNIST images (Debian dataset-fashion-mnist):
  describe images/s with the template backend and with each VLM backend on a tiny random model
  (tests/make_tiny_vlms.py), and again with every image already in the description cache;
  embed descriptions/s through `run_embed` next to bare `model.encode` on the same texts (the ratio is
  the overhead of our code); pack and verify images/s; pack's peak anonymous memory for n and 16n images
  in 4 MB files (MindRecord indexes one file in memory at commit: the file size cap bounds memory). Each stage runs in its own process, as in use.

With --ray (or --ray-only: that part alone), the Ray engine on a local 2-CPU Ray cluster started here
(export/ray_local.py), on the same data as one process: describe (template; tiny BLIP-2) and embed
(all-MiniLM-L6-v2), whole commands, images/s for one process and for Ray with 1 worker of 2 CPUs (the ratio
to one process is the Ray path's overhead) and 2 workers of 1 CPU, plus the fixed cost (a run of one block); and
the rebalancing figure: 2 workers whose blocks stand for 0.3 s of GPU work each (the test-only delay,
GPT4IMAGE_RAY_TEST_DELAY), one of them 4x slower, against both at speed, the fast one alone, and what a
static 2-way split would cost (the slow worker's half of the blocks, alone), medians of 3.
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
sys.path.insert(0, str(ROOT))  # export.ray_local
from export.ray_local import LOOPBACK_ENV  # noqa: E402
VLM_BACKENDS = {"blip2": "blip2", "instructblip": "instructblip", "llava": "llava", "llava-next": "llava-next",
                "vlm": "idefics3"}  # describe backend -> tiny model built by tests/make_tiny_vlms.py
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_v="3", PYTHONPATH=str(ROOT), **LOOPBACK_ENV)

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


def median_seconds(make_args, runs: int = 3, env=None) -> float:
    """Median wall time of `runs` runs of the command make_args(k) (k = 0, 1, ...: a fresh output each)."""
    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *map(str, make_args(k))], cwd=ROOT, env=env or ENV,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{make_args(k)} failed:\n{proc.stderr[-3000:]}")
    return sorted(times)[len(times) // 2]


def bench_ray(out: Path, n: int, vlm_n: int) -> dict:
    """The Ray engine's columns (see the module docstring), on one local 2-CPU cluster. Whole commands:
    one process; Ray with 1 worker of 2 CPUs (the machine, as one process has it: the overhead) and with 2
    workers of 1 CPU (Ray gives a worker as many threads as CPUs); and a Ray run of one block (fixed cost)."""
    from export.ray_local import local_cluster
    r = {}
    out.mkdir(parents=True, exist_ok=True)
    timed(ROOT / "tests" / "make_tiny_vlms.py", "blip2", out / "blip2")
    timed("-m", "export", "describe", "--limit", n, "--cache", "none", "--out", out / "texts.jsonl")
    n_template = 4 * n
    workloads = {  # name: (command, items, block size (describe) / chunk size (embed))
        "describe_template": (("-m", "export", "describe", "--cache", "none", "--batch-size", 64, "--limit",
                               n_template), n_template, 512),
        "describe_tiny_blip2": (("-m", "export", "describe", "--cache", "none", "--backend", "blip2", "--model",
                                 out / "blip2", "--device", "cpu", "--max-new-tokens", 8, "--batch-size", 16,
                                 "--limit", vlm_n), vlm_n, 64),
        "embed_minilm": (("-m", "export", "embed", "--descriptions", out / "texts.jsonl"), n, 250),
    }
    runs = iter(range(1000))
    with local_cluster(num_cpus=2, env=ENV, cwd=ROOT) as address:
        ray = ("--engine", "ray", "--address", address)
        timed("-m", "export", "describe", "--limit", 64, "--cache", "none", *ray, "--out", out / "warm" / "d.jsonl")
        for name, (cmd, count, block) in workloads.items():
            is_describe = cmd[2] == "describe"
            size = ("--block-size", block) if is_describe else ("--chunk-size", block)

            def run(*extra):
                target = out / f"{name}_{next(runs)}" / ("d.jsonl" if is_describe else "emb")
                seconds, _ = timed(*cmd, *size, *extra, "--out", target)
                return seconds
            one = run()
            r[f"{name}_one_process_per_s"] = count / one
            s = run(*ray, "--workers", 1, "--num-cpus-per-worker", 2)
            r[f"{name}_ray_1_worker_2_cpus_per_s"] = count / s
            r[f"{name}_ray_1_worker_time_over_one_process"] = s / one
            r[f"{name}_ray_2_workers_per_s"] = count / run(*ray, "--workers", 2)
            if is_describe:  # one block only: the command's fixed cost (start, connect, workers load the model)
                r[f"{name}_ray_2_workers_one_block_s"] = run(*ray, "--workers", 2, "--limit", block)

        # rebalancing: 25 blocks of 80 images, each standing for 0.3 s of GPU work (the test-only delay, on
        # every worker); one of the two workers 4x slower (1.2 s a block)
        def args(name, limit=2000, workers=2):
            return lambda k: ("-m", "export", "describe", "--cache", "none", "--limit", limit, "--batch-size", 16,
                              "--block-size", 80, *ray, "--workers", workers, "--out", out / f"{name}{k}" / "d.jsonl")

        def delay(text):
            return dict(ENV, GPT4IMAGE_RAY_TEST_DELAY=text)
        r["rebalance_even_s"] = median_seconds(args("even"), env=delay("0.3"))
        r["rebalance_one_slow_worker_s"] = median_seconds(args("slow"), env=delay("1.2:1:0.3"))
        r["rebalance_fast_worker_alone_s"] = median_seconds(args("alone", workers=1), env=delay("0.3"))
        # a static 2-way split gives the slow worker 13 of the 25 blocks: that half alone, on one slowed worker
        r["rebalance_static_split_slow_half_s"] = median_seconds(args("half", 13 * 80, 1), env=delay("1.2"))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--vlm-images", type=int, default=128)
    ap.add_argument("--ray", action="store_true", help="add the Ray engine's columns")
    ap.add_argument("--ray-only", action="store_true", help="only the Ray engine's columns")
    ap.add_argument("--out", default="runs/bench_offline")
    a = ap.parse_args()
    out = ROOT / a.out
    subprocess.run(["rm", "-rf", str(out)])
    out.mkdir(parents=True)
    n = a.images
    r = {"images": n}
    if a.ray_only:
        r.update(bench_ray(out / "ray", n, a.vlm_images))
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, indent=2))
        return
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
    if a.ray:
        r.update(bench_ray(out / "ray", n, a.vlm_images))
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}, indent=2))


if __name__ == "__main__":
    main()
