"""Benchmark: `python -m export pack` against MindSpore's own converter, mindspore.mindrecord.ImageNetToMR,
on the same JPEGs, side by side (run by hand; figures go into docs/benchmarks.md).

Inputs, made once under --work: --images 500x375 JPEGs (quality 88-92; crops, flips and brightness changes of
scikit-image's sample photos, 14 classes) in an image folder (train/<class>/*.jpg, val/<class>/*.jpg, one
val image per class), descriptions (import-descriptions) and random unit 384-d embeddings (import-embeddings).

Each round runs, each as a whole command in its own process (interpreter start and imports included, as in use):
  pack          python -m export pack --source imagefolder ... --eval-limit 1: the train split (index, label,
                image bytes, 384-d text embedding, description) + 1 eval image, the manifest with sha256 per file
  ImageNetToMR  python -c "ImageNetToMR(map_file, train dir, out, 1).transform()": label, image bytes, file name
--before REV adds pack with export/pack.py and export/readers.py as at git revision REV (the rest of this checkout
as it is).
Rounds are interleaved (pack at REV, pack, ImageNetToMR, pack at REV, ...). Reported: images/s of each (train images / wall
seconds), every round, the median, the spread (max/min), and pack / ImageNetToMR per round and its median.
--profile also writes a cProfile of one pack run (in-process) to WORK/pack.prof and prints its top lines.

  .venv/bin/python scripts/bench_pack.py --images 2000 --rounds 5 --before HEAD
  .venv/bin/python scripts/bench_pack.py --profile
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_pipeline import ENV, PHOTOS, export_cli, photos, variant  # noqa: E402

IMAGENET_TO_MR = """
import sys
from mindspore.mindrecord import ImageNetToMR
ImageNetToMR(sys.argv[1], sys.argv[2], sys.argv[3], 1).transform()
"""


def make_inputs(work: Path, n: int, seed: int) -> Path:
    root = work / "images"
    if (work / "emb.npy").exists():
        return root
    rng, imgs = np.random.default_rng(seed), list(photos())
    for split, count in (("train", n), ("val", len(imgs))):
        for i in range(count):
            c = i % len(imgs)
            d = root / split / f"{c:02d}_{PHOTOS[c]}"
            d.mkdir(parents=True, exist_ok=True)
            variant(imgs[c], rng, (500, 375)).save(d / f"{i:05d}.jpg", quality=int(rng.integers(88, 93)))
    # ImageNetToMR's map file: "<folder> <label>" per line, labels in the folders' sorted order (as ours)
    (work / "labels_map.txt").write_text("".join(f"{d.name} {k}\n" for k, d in
                                                 enumerate(sorted((root / "train").iterdir()))))
    raw = work / "raw_descriptions.jsonl"
    raw.write_text("".join(json.dumps({"index": i, "description": f"synthetic image {i}"}) + "\n" for i in range(n)))
    export_cli("import-descriptions", "--source", "imagefolder", "--root", root, "--src", raw, "--format", "jsonl",
               "--out", work / "desc.jsonl")
    np.save(work / "emb_raw.npy", np.random.default_rng(seed).normal(size=(n, 384)).astype(np.float32))
    export_cli("import-embeddings", "--src", work / "emb_raw.npy", "--descriptions", work / "desc.jsonl",
               "--out", work / "emb", "--normalize", "--model", "random-unit-384")
    return root


def pack_args(work: Path, root: Path, out: Path):
    return ["-m", "export", "pack", "--source", "imagefolder", "--root", str(root), "--descriptions",
            str(work / "desc.jsonl"), "--embeddings", str(work / "emb"), "--eval-split", "val", "--eval-limit", "1",
            "--out", str(out), "--overwrite"]


def before_tree(work: Path, rev: str) -> Path:
    """A copy of this checkout's export/ and ms_gpt4image/ with export/pack.py and readers.py as at `rev`."""
    import shutil
    tree = work / f"tree_{rev}"
    shutil.rmtree(tree, ignore_errors=True)
    for pkg in ("export", "ms_gpt4image"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pack.py", "readers.py"):
        (tree / "export" / name).write_text(subprocess.run(["git", "show", f"{rev}:export/{name}"], cwd=ROOT,
                                                           check=True, capture_output=True, text=True).stdout)
    return tree


def timed(args, cwd=ROOT) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=dict(ENV, PYTHONPATH=str(cwd)), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def profile(work: Path, root: Path):
    import cProfile
    import pstats
    sys.path.insert(0, str(ROOT))
    from export.__main__ import main as export_main
    prof = cProfile.Profile()
    argv = sys.argv
    sys.argv = ["export"] + pack_args(work, root, work / "out_profile")[2:]
    try:
        prof.runcall(export_main)
    except SystemExit:
        pass
    finally:
        sys.argv = argv
    prof.dump_stats(str(work / "pack.prof"))
    stats = pstats.Stats(str(work / "pack.prof"))
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(15)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default="runs/bench_pack")
    ap.add_argument("--profile", action="store_true", help="a cProfile of one pack run instead of the rounds")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="also run pack with export/pack.py as at git revision REV (e.g. HEAD), in every round")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    work = ROOT / a.work
    work.mkdir(parents=True, exist_ok=True)
    root = make_inputs(work, a.images, a.seed)
    if a.profile:
        return profile(work, root)
    ours, theirs, before = [], [], []
    tree = before_tree(work, a.before) if a.before else None
    for k in range(a.rounds):
        if tree:
            before.append(a.images / timed(pack_args(work, root, work / "out_pack_before"), cwd=tree))
        ours.append(a.images / timed(pack_args(work, root, work / "out_pack")))
        out = work / "out_imagenet_to_mr"
        out.mkdir(exist_ok=True)
        for f in out.glob("imagenet.mindrecord*"):
            f.unlink()
        theirs.append(a.images / timed(["-c", IMAGENET_TO_MR, str(work / "labels_map.txt"), str(root / "train"),
                                        str(out / "imagenet.mindrecord")]))
        print(f"round {k + 1}: pack {ours[-1]:.0f} images/s, ImageNetToMR {theirs[-1]:.0f} images/s"
              + (f", pack at {a.before} {before[-1]:.0f} images/s" if tree else ""), file=sys.stderr, flush=True)
    ratios = [o / t for o, t in zip(ours, theirs)]
    print(f"\n| command | rounds (images/s) | median | spread (max/min) |\n|---|---|---|---|")
    if tree:
        print(f"| pack, export/pack.py and readers.py at {a.before} | {', '.join(f'{x:.0f}' for x in before)} | "
              f"{statistics.median(before):.0f} | {max(before) / min(before):.2f} |")
        r = [b / t for b, t in zip(before, theirs)]
        print(f"| pack at {a.before} / ImageNetToMR | {', '.join(f'{x:.2f}' for x in r)} | {statistics.median(r):.2f} | |")
    for name, xs in (("pack (train + 1 eval image, embeddings, descriptions, manifest with sha256)", ours),
                     ("ImageNetToMR (label, image, file name)", theirs)):
        print(f"| {name} | {', '.join(f'{x:.0f}' for x in xs)} | {statistics.median(xs):.0f} | {max(xs) / min(xs):.2f} |")
    print(f"| pack / ImageNetToMR | {', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} | |")
    if a.json:
        Path(a.json).write_text(json.dumps({"images": a.images, "pack": ours, "imagenet_to_mr": theirs, "before": before,
                                            "ratios": ratios}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
