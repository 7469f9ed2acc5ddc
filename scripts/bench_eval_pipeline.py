"""Benchmark: what an evaluation pass costs with `python_multiprocessing: true`, with and without
`compat.fix_worker_pool_teardown` (run by hand; figures go into docs/benchmarks.md).

Every evaluation (`engine.evaluate`, twice per epoch with EMA) makes a new iterator over the eval
pipeline, whose Python op (timm's resize + centre crop) runs in a pool of worker processes; when the pass
ends the pool is torn down. MindSpore 2.7.2 never tells the pool's clean process to quit, so that
teardown waits 5 s (compat.py says why). Each setting runs in a fresh process: `--passes` full passes
over the eval split of the JPEG data that scripts/bench_pipeline.py makes (cached under
runs/bench_pipeline), each timed from the iterator's creation to the end of its teardown, and the
teardown alone; settings interleaved, `--rounds` rounds. "unfixed" removes the fix in its process.

  .venv/bin/python scripts/bench_eval_pipeline.py --passes 3 --rounds 3
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT))


def child(spec):
    sys.path.insert(0, str(ROOT))
    from ms_gpt4image.config import load_config
    from ms_gpt4image.data import create_dataset
    if not spec["fixed"]:
        from mindspore.dataset.engine.datasets import _PythonMultiprocessing
        if "eof" in vars(_PythonMultiprocessing):
            del _PythonMultiprocessing.eof
    cfg = load_config(str(ROOT / "configs" / "imagenet_deit_small.yaml"),
                      [f"data_dir={spec['data']}", f"num_parallel_workers={spec['workers']}",
                       "python_multiprocessing=true", f"eval_batch_size={spec['batch']}"])
    data, _ = create_dataset(cfg, "eval")
    passes = []
    for _ in range(spec["passes"]):
        t0 = time.perf_counter()
        it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
        images = sum(batch[0].shape[0] for batch in it)
        t1 = time.perf_counter()
        del it
        gc.collect()  # the iterator's __del__ tears the pool down
        t2 = time.perf_counter()
        passes.append({"pass_s": t2 - t0, "teardown_s": t2 - t1, "images": images})
    print(json.dumps(passes))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3, help="evaluation passes per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--data", default=None, help="a packed directory with an eval split (default: scripts/"
                    "bench_pipeline.py's JPEGs under runs/bench_pipeline, made if missing)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    for name in ("passes", "rounds", "workers", "batch"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} {getattr(a, name)}: must be at least 1")
    if a.data is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_pipeline import make_jpeg_data
        data = make_jpeg_data(ROOT / "runs" / "bench_pipeline", 1000, 0)
    else:
        data = Path(a.data).resolve()
        if not (data / "manifest.json").exists():
            ap.error(f"--data {a.data}: no manifest.json there (a folder that `python -m export pack` wrote)")
    results = {"fixed": [], "unfixed": []}
    for r in range(a.rounds):
        for name in results:
            spec = dict(fixed=name == "fixed", data=str(data), workers=a.workers, batch=a.batch, passes=a.passes)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, env=ENV,
                                  capture_output=True, text=True)
            if proc.returncode:
                lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
                raise SystemExit(f"bench_eval_pipeline: the {name} run on {data} failed: {lines[-1] if lines else proc.returncode}")
            passes = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(passes)
            print(f"round {r + 1} {name}: " + ", ".join(f"{p['pass_s']:.2f} s (teardown {p['teardown_s']:.2f})"
                                                         for p in passes), flush=True)
    images = results["fixed"][0][0]["images"]
    print(f"\n{images} eval images, {a.workers} workers, batch {a.batch}; seconds per pass, all rounds:")
    for name, rounds in results.items():
        whole = [p["pass_s"] for ps in rounds for p in ps]
        down = [p["teardown_s"] for ps in rounds for p in ps]
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in whole)} | median {statistics.median(whole):.2f} | "
              f"teardown median {statistics.median(down):.2f} |")


if __name__ == "__main__":
    main()
