"""Benchmark: images/s that the training INPUT PIPELINE alone delivers (no model), run by hand.

For each transform recipe and worker count, `ms_gpt4image.data.create_dataset(cfg, "train")` is built
on a real packed directory and iterated (`output_numpy=True`): a few warm-up batches, then --batches
timed; the median of --repeats rounds is reported (each round runs every setting once, in turn).

Every row also gives what one step moves to the device (all the batch's columns, from the first timed
batch) and the image dtype; `--device-normalize` runs each recipe that allows it twice, side by side:
float32 images normalised on the host (device_normalize: false) and uint8 images the train step normalises
on the device (device_normalize: true; ms_gpt4image/device_input.py). The DeiT recipe (random erasing,
mixup) stays float32. Its shm column is host_memory's estimate of the shared memory per rank.

Recipes:
  demo            configs/demo_fmnist.yaml (transforms: small, 28 px grey images)
  imagenet-basic  configs/imagenet_resnet50.yaml: RandomResizedCrop 224 + flip only
  deit            configs/imagenet_deit_small.yaml: RandAugment m9, random erasing 0.25, mixup/cutmix

Inputs are made here once and cached under --work: ImageNet-like JPEGs (~500x375, quality ~90; crops,
flips and brightness changes of scikit-image's sample photos, one class per photo) and 28x28 grey
idx images for the demo, packed by our own CLI (`python -m export import-descriptions /
import-embeddings / pack`, each in its own process; random unit 384-d text embeddings).

Examples:
  .venv/bin/python scripts/bench_pipeline.py
  .venv/bin/python scripts/bench_pipeline.py --workers 1,2,4 --repeats 3 --json runs/bench_pipeline/result.json
  .venv/bin/python scripts/bench_pipeline.py --recipes deit --workers 2 --batches 10 --train-step
  .venv/bin/python scripts/bench_pipeline.py --recipes imagenet-basic,demo --workers 2 --device-normalize
"""
import argparse
import gzip
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GLOG_v="3", PYTHONPATH=str(ROOT))
RECIPES = {  # name: (config, overrides)
    "demo": ("configs/demo_fmnist.yaml", []),
    "imagenet-basic": ("configs/imagenet_resnet50.yaml",
                       ["transforms=imagenet", "image_size=224", "auto_augment=null", "re_prob=0",
                        "color_jitter=null", "hflip=true", "mixup=0", "cutmix=0"]),
    "deit": ("configs/imagenet_deit_small.yaml", []),
}
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "colorwheel", "logo", "camera", "coins", "brick", "clock"]  # last 4: grey -> RGB
ASCEND_RN50 = 32 / 0.0314  # mindcv ResNet-50 on one Ascend 910: 31.4 ms/step at batch 32 -> ~1019 images/s


def photos():
    from PIL import Image
    from skimage import data
    for name in PHOTOS:
        a = getattr(data, name)()
        yield Image.fromarray(a[0] if isinstance(a, tuple) else a).convert("RGB")


def variant(img, rng, size):
    """A random crop (35-100 % of the area), flip and brightness change, resized to `size`."""
    from PIL import ImageEnhance, ImageOps
    w, h = img.size
    area = rng.uniform(0.35, 1.0) * w * h
    aspect = size[0] / size[1] * rng.uniform(0.8, 1.25)
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    out = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return ImageEnhance.Brightness(out.resize(size)).enhance(rng.uniform(0.8, 1.2))


def export_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "export", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"`python -m export {' '.join(map(str, args))}` exited {proc.returncode}:\n"
                         f"{proc.stderr[-3000:]}")


def pack(kind, root: Path, out: Path, n_train: int, eval_split: str, seed: int) -> Path:
    """Descriptions + random unit embeddings for every train image, then `export pack` -> out/data."""
    raw = out / "raw_descriptions.jsonl"
    raw.write_text("".join(json.dumps({"index": i, "description": f"synthetic image {i}"}) + "\n"
                           for i in range(n_train)))
    export_cli("import-descriptions", "--source", kind, "--root", root, "--src", raw, "--format", "jsonl",
               "--out", out / "desc.jsonl")
    np.save(out / "emb_raw.npy", np.random.default_rng(seed).normal(size=(n_train, 384)).astype(np.float32))
    export_cli("import-embeddings", "--src", out / "emb_raw.npy", "--descriptions", out / "desc.jsonl",
               "--out", out / "emb", "--normalize", "--model", "random-unit-384")
    export_cli("pack", "--source", kind, "--root", root, "--descriptions", out / "desc.jsonl",
               "--embeddings", out / "emb", "--eval-split", eval_split, "--out", out / "data", "--overwrite")
    return out / "data"


def make_jpeg_data(work: Path, n_train: int, seed: int) -> Path:
    out = work / "imagenet_like"
    if (out / "data" / "manifest.json").exists():
        return out / "data"
    from tqdm import tqdm
    rng, imgs = np.random.default_rng(seed), list(photos())
    for split, n in (("train", n_train), ("val", 4 * len(imgs))):
        for i in tqdm(range(n), desc=f"JPEG {split}", leave=False):
            c = i % len(imgs)
            size = (375, 500) if rng.random() < 0.2 else (500, 375)
            d = out / "images" / split / f"{c:02d}_{PHOTOS[c]}"
            d.mkdir(parents=True, exist_ok=True)
            variant(imgs[c], rng, size).save(d / f"{i:05d}.jpg", quality=int(rng.integers(88, 93)))
    return pack("imagefolder", out / "images", out, n_train, "val", seed)


def make_demo_data(work: Path, n_train: int, seed: int) -> Path:
    out = work / "demo_28px"
    if (out / "data" / "manifest.json").exists():
        return out / "data"
    rng, imgs = np.random.default_rng(seed + 1), list(photos())
    out.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", 200)):
        labels = np.arange(n) % 10
        x = np.stack([np.asarray(variant(imgs[(i % len(imgs))], rng, (28, 28)).convert("L")) for i in range(n)])
        for kind, arr in (("images-idx3", x), ("labels-idx1", labels.astype(np.uint8))):
            header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
            with gzip.open(out / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.tobytes())
    return pack("idx", out, out, n_train, "test", seed)


def measure(cfg, warmup: int, batches: int):
    """(images/s, images per CPU-second of this process's threads; worker processes are not counted,
    bytes of one batch (all columns: what a step sends to the device), its image dtype)."""
    from ms_gpt4image.data import create_dataset
    data, _ = create_dataset(cfg, "train")
    per_epoch = data.get_dataset_size()
    if per_epoch == 0:
        raise SystemExit(f"{cfg['data_dir']}: fewer train images than one batch of {cfg['batch_size']}")
    data = data.repeat(-(-(warmup + batches) // per_epoch))  # enough epochs for warm-up + timed batches
    it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    first = next(it)
    n = first[0].shape[0] + sum(next(it)[0].shape[0] for _ in range(batches - 1))
    ips, cpu_ips = n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)
    del it, data
    return ips, cpu_ips, sum(column.nbytes for column in first), str(first[0].dtype)


def train_step_ips(batch: int, steps: int):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--batch", str(batch), "--steps", str(steps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    try:
        rows = json.loads(proc.stdout.split("\n| backbone")[0])["models"]
        return rows[0]["images_per_s_lambda0"], rows[0]["images_per_s_lambda0.3"]
    except (ValueError, KeyError, IndexError):
        print(f"warning: bench_train_step.py gave no result (exit {proc.returncode}): {proc.stderr[-500:]}",
              file=sys.stderr)
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {','.join(RECIPES)}")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated num_parallel_workers values")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the config's; 64 for imagenet recipes)")
    ap.add_argument("--images", type=int, default=1000, help="distinct train JPEGs to make")
    ap.add_argument("--demo-images", type=int, default=4000, help="distinct 28 px train images to make")
    ap.add_argument("--work", default="runs/bench_pipeline", help="generated data is cached here")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--train-step", action="store_true", help="also time the demo net's train step (bench_train_step.py)")
    ap.add_argument("--device-normalize", action="store_true",
                    help="run each recipe that allows it with float32 (host-normalised) and uint8 images side by side")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    recipes = a.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    workers = [int(w) for w in a.workers.split(",")]
    too_many = [w for w in workers if w > (os.cpu_count() or 1)]
    if too_many:  # mindspore.dataset refuses num_parallel_workers above the core count
        print(f"warning: skipping --workers {too_many}: mindspore.dataset allows at most os.cpu_count() = "
              f"{os.cpu_count()} workers here", file=sys.stderr)
        workers = [w for w in workers if w not in too_many]
    work = (ROOT / a.work) if not Path(a.work).is_absolute() else Path(a.work)

    data_dirs = {}
    if "demo" in recipes:
        data_dirs["demo"] = make_demo_data(work, a.demo_images, a.seed)
    if set(recipes) - {"demo"}:
        data_dirs["imagenet-basic"] = data_dirs["deit"] = make_jpeg_data(work, a.images, a.seed)

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("GLOG_v", "3")
    import mindspore.dataset as ds
    from ms_gpt4image.config import device_normalize_blockers, load_config
    from ms_gpt4image.host_memory import estimate
    from tqdm import tqdm
    ds.config.set_seed(a.seed)
    settings = []
    for r in recipes:
        for w in workers:
            for pm in ((True, False) if r == "deit" else (None,)):  # RandAugment and mixup are Python
                uint8_allowed = not device_normalize_blockers(load_config(str(ROOT / RECIPES[r][0]), RECIPES[r][1]))
                for dn in ((False, True) if a.device_normalize and uint8_allowed else (None,)):
                    settings.append((r, w, pm, dn))
    rows, cfgs, runs = [], [], []
    for r, w, pm, dn in settings:
        config, overrides = RECIPES[r]
        batch = a.batch or (64 if r != "demo" else None)
        overrides = overrides + [f"data_dir={data_dirs[r]}", f"num_parallel_workers={w}"] + \
            ([f"batch_size={batch}"] if batch else []) + ([f"python_multiprocessing={pm}"] if pm is not None else []) + \
            ([f"device_normalize={str(dn).lower()}"] if dn is not None else [])
        cfg = load_config(str(ROOT / config), overrides)
        cfgs.append(cfg)
        runs.append([])
        rows.append({"recipe": r, "workers": w, "python_multiprocessing": pm, "device_normalize": cfg["device_normalize"],
                     "batch": cfg["batch_size"], "shm_per_rank_mb": round(estimate(cfg)["per_rank_bytes"] / 1e6, 2)})
    # rounds: every setting once per round, so that a slower or busier stretch of the machine falls on all alike
    for _ in tqdm(range(a.repeats), desc="rounds"):
        for cfg, row, got in zip(cfgs, rows, runs):
            if "error" in row:
                continue
            try:
                got.append(measure(cfg, a.warmup, a.batches))
            except RuntimeError as e:  # a pipeline error: record it and go on with the other settings
                lines = [ln.strip() for ln in str(e).splitlines() if re.match(r"\s*\w*(Error|Exception): ", ln)]
                row["error"] = (lines or ["?"])[-1][:200]
                print(f"\nerror in {row['recipe']}, workers {row['workers']}, python_multiprocessing "
                      f"{row['python_multiprocessing']}: {row['error']}", file=sys.stderr)
    for cfg, row, got in zip(cfgs, rows, runs):
        if "error" in row:
            row.update(images_per_s=None, images_per_s_per_worker=None, images_per_cpu_s=None, runs=[],
                       image_dtype=None, bytes_per_step=None, mb_per_s_to_device=None)
            continue
        ips, step_bytes = statistics.median(x[0] for x in got), got[0][2]
        row.update(images_per_s=round(ips, 1), images_per_s_per_worker=round(ips / row["workers"], 1),
                   images_per_cpu_s=round(statistics.median(x[1] for x in got), 1),
                   runs=[round(x[0], 1) for x in got], image_dtype=got[0][3], bytes_per_step=step_bytes,
                   mb_per_s_to_device=round(ips / cfg["batch_size"] * step_bytes / 1e6, 1))

    print("\n| recipe | workers | python_multiprocessing | device_normalize | image dtype | batch | median images/s "
          "| images/s per worker | images per CPU-s | MB/step to device | MB/s to device | shm/rank (MB, est.) | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        pm = "-" if x["python_multiprocessing"] is None else x["python_multiprocessing"]
        mb = "-" if x["bytes_per_step"] is None else round(x["bytes_per_step"] / 1e6, 3)
        print(f"| {x['recipe']} | {x['workers']} | {pm} | {x['device_normalize']} | {x['image_dtype']} | {x['batch']} "
              f"| {x['images_per_s']} | {x['images_per_s_per_worker']} | {x['images_per_cpu_s']} | {mb} "
              f"| {x['mb_per_s_to_device']} | {x['shm_per_rank_mb']} | {', '.join(map(str, x['runs'])) or 'error: ' + x['error']} |")
    cores = {}
    for r in ("imagenet-basic", "deit"):
        # thread workers only: the CPU time of worker processes is not counted
        one = [x for x in rows if x["recipe"] == r and x["workers"] == 1 and x["images_per_s"]
               and x["python_multiprocessing"] is not True]
        if one:
            best = max(one, key=lambda x: x["images_per_s"])
            ips, cpu = best["images_per_s"], best["images_per_cpu_s"]
            cores[r] = {"one_worker_images_per_s": ips, "cores_for_1000_images_per_s": round(1000 / ips, 1),
                        "cores_per_ascend910_resnet50": round(ASCEND_RN50 / ips, 1),
                        "cores_for_1000_images_per_s_by_cpu_time": round(1000 / cpu, 1)}
            print(f"{r}: 1 worker = {ips} images/s -> ~{1000 / ips:.1f} workers for 1,000 images/s "
                  f"(~{ASCEND_RN50 / ips:.1f} per Ascend 910 card at mindcv's ResNet-50 {ASCEND_RN50:.0f} images/s), "
                  f"assuming linear scaling; by CPU time used: ~{1000 / cpu:.1f} cores")
    result = {"cpu_count": os.cpu_count(), "batches": a.batches, "warmup": a.warmup, "repeats": a.repeats,
              "rows": rows, "cores_needed": cores}
    if a.train_step:
        demo_batch = load_config(str(ROOT / RECIPES["demo"][0]))["batch_size"]
        step = train_step_ips(a.batch or demo_batch, a.batches)
        if step:
            result["train_step_demo_images_per_s"] = {"lambda0": step[0], "lambda0.3": step[1]}
            print(f"demo train step (resnet18_cifar width 16, batch {a.batch or demo_batch}): "
                  f"{step[0]} images/s (lambda 0), {step[1]} images/s (lambda 0.3)")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
