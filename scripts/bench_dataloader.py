"""Benchmark: our MindSpore training input pipeline against torch.utils.data.DataLoader running the SAME
PIL transforms on the same JPEGs, side by side (run by hand; figures go into docs/benchmarks.md).

Ours: `ms_gpt4image.data.create_dataset(cfg, "train")` on the packed directory that scripts/bench_pipeline.py
makes (1,000 ~500x375 JPEGs, cached under runs/bench_pipeline), iterated with output_numpy=True, with
python_multiprocessing false (worker threads) and true (worker processes).
The anchor: a torch Dataset over the same encoded bytes, labels and text embeddings (read once from the
same MindRecord) whose __getitem__ runs our augment.TrainTransform (timm 0.3.2's transforms on PIL,
pixel-equal to timm's: tests/test_fidelity_augment.py) on the bytes, in a DataLoader with the same batch
size and num_workers (always processes), drop_last, a shuffled index list long enough for every timed batch
(no epoch boundary). DeiT: the same mindcv Mixup object (data.PerMicroBatch) applied to each collated batch
in the loop, as timm's train loop does; `deit-ra3` is the recipe as configured (repeated_aug 3) against
a sampler that yields each shuffled index 3 times in a row (DeiT's RASampler on one rank; every copy
decoded in the Dataset, where ours decodes a record once and augments it 3 times).

Every measurement runs in a fresh process (as in use; no fork of a process that has MindSpore's threads):
--warmup untimed batches, then --batches timed. Rounds are interleaved: every setting of both loaders
once per round, then the next round. Reported: every round's images/s, the median, the spread (max/min)
and ours / DataLoader (median of the per-round ratios).

Recipes:
  resnet50   configs/imagenet_resnet50.yaml: RandomResizedCrop 224 + flip, normalise (float32)
  deit       configs/imagenet_deit_small.yaml with repeated_aug=1: + RandAugment m9, random erasing, mixup/cutmix
  deit-ra3   configs/imagenet_deit_small.yaml as it is (repeated_aug 3)
  null       no image work: a constant 3 x 224 x 224 float32 array per record (the loaders' own cost per image)

  .venv/bin/python scripts/bench_dataloader.py --recipes resnet50,deit --workers 1,2 --rounds 3
"""
import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT))
RECIPES = {"resnet50": ("configs/imagenet_resnet50.yaml", []),
           "null": ("configs/imagenet_resnet50.yaml", []),  # the loaders' own cost: see NullTransform
           "deit": ("configs/imagenet_deit_small.yaml", ["repeated_aug=1"]),
           "deit-ra3": ("configs/imagenet_deit_small.yaml", [])}


# ours: -> spec["pm"]; per-image and mix-in-main are experiments (what data.py did before, and a variant of it)
MODES = {"threads": False, "processes": True, "per-image": "per-image", "mix-in-main": "mix-in-main"}


def config(recipe, data_dir, workers, batch, pm):
    sys.path.insert(0, str(ROOT))
    from ms_gpt4image.config import load_config
    path, overrides = RECIPES[recipe]
    return load_config(str(ROOT / path), overrides + [f"data_dir={data_dir}", f"num_parallel_workers={workers}",
                                                      f"batch_size={batch}", f"python_multiprocessing={pm}",
                                                      "device_normalize=false", "accumulate_steps=null"])


class NullTransform:
    """Recipe `null`: encoded bytes -> a constant 3 x 224 x 224 float32 image, no decoding: what is left is
    what each loader's machinery costs per image (moving the bytes to a worker, the image back, batching)."""

    def __call__(self, encoded):
        import numpy as np
        return np.ones((3, 224, 224), np.float32)


def per_image():
    """Mode `per-image` (data.py before the batch workers made the rows, data.rows_in_batch_workers): a
    map's worker processes send each image, a batch op's worker processes mix each batch."""
    from ms_gpt4image import data
    data.rows_in_batch_workers = lambda cfg, train: False


def mix_in_main_process():
    """Mode `mix-in-main` (an experiment, not what data.py does): `per-image`, with the mixing batch op in
    one thread of the main process, where the DataLoader's loop mixes."""
    import mindspore.dataset as ds
    per_image()
    batch = ds.Dataset.batch

    def patched(self, *args, **kwargs):
        if kwargs.get("per_batch_map") is not None:
            kwargs.update(python_multiprocessing=False, num_parallel_workers=1)
        return batch(self, *args, **kwargs)
    ds.Dataset.batch = patched


def run_ours(spec):
    if spec["pm"] == "mix-in-main":
        mix_in_main_process()
    elif spec["pm"] == "per-image":
        per_image()
    cfg = config(spec["recipe"], spec["data_dir"], spec["workers"], spec["batch"], spec["pm"] is not False)
    from ms_gpt4image import data as data_module
    from ms_gpt4image.data import create_dataset
    if spec["recipe"] == "null":
        data_module.image_ops = lambda cfg, train, rank=0, uint8=None: [NullTransform()]
    data, _ = create_dataset(cfg, "train")
    per_epoch = data.get_dataset_size()
    data = data.repeat(-(-(spec["warmup"] + spec["batches"]) // per_epoch))
    it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for _ in range(spec["warmup"]):
        next(it)
    t0 = time.perf_counter()
    n = sum(next(it)[0].shape[0] for _ in range(spec["batches"]))
    return n / (time.perf_counter() - t0)


class Records:
    """torch Dataset: position -> (TrainTransform(encoded bytes), label, text_emb) of record order[position]."""

    def __init__(self, records, order, transform):
        self.records, self.order, self.transform = records, order, transform

    def __len__(self):
        return len(self.order)

    def __getitem__(self, k):
        import torch
        image, label, emb = self.records[self.order[k]]
        return torch.from_numpy(self.transform(image)), label, torch.from_numpy(emb)


def run_torch(spec):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    sys.path.insert(0, str(ROOT))
    with open(spec["objects"], "rb") as f:
        records, transform = pickle.load(f)  # no MindSpore in here: the workers fork a torch-only process
    rng = np.random.default_rng(spec["round"])
    need = (spec["warmup"] + spec["batches"] + 2) * spec["batch"]
    repeats = spec["repeats"]
    order = []
    while len(order) < need:
        order += [int(i) for i in rng.permutation(len(records)) for _ in range(repeats)]
    loader = DataLoader(Records(records, order, transform), batch_size=spec["batch"], shuffle=False,
                        num_workers=spec["workers"], drop_last=True)
    it = iter(loader)  # forks the workers
    mix = None
    if spec["mix"]:
        with open(spec["mix"], "rb") as f:
            mix = pickle.load(f)  # data.PerMicroBatch(mindcv Mixup): imports MindSpore, after the fork

    def step():
        images, labels, emb = next(it)
        if mix is not None:
            images, labels = mix(images.numpy(), labels.numpy())
        return len(images)
    for _ in range(spec["warmup"]):
        step()
    t0 = time.perf_counter()
    n = sum(step() for _ in range(spec["batches"]))
    return n / (time.perf_counter() - t0)


def prepare(data_dir, recipes, batch, work: Path):
    """The records (encoded bytes, label, text_emb) and, per recipe, the pickled TrainTransform and mixup."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from mindspore.mindrecord import FileReader
    from ms_gpt4image.data import _mixup, image_ops, load_manifest, split_files
    manifest = load_manifest(data_dir)
    records = []
    for f in split_files(data_dir, manifest, "train"):
        reader = FileReader(f, columns=["image", "label", "text_emb"])
        for row in reader.get_next():
            records.append((bytes(row["image"]), int(row["label"]), np.asarray(row["text_emb"], np.float32)))
        reader.close()
    out = {}
    for r in recipes:
        cfg = config(r, data_dir, 1, batch, False)
        ops = image_ops(cfg, True)
        transform = ops[1]  # [vision.Decode(), augment.TrainTransform]: TrainTransform decodes bytes with PIL
        if r == "null":
            transform = NullTransform()
        with open(work / f"{r}_objects.pkl", "wb") as f:
            pickle.dump((records, transform), f)
        mix = _mixup(cfg, manifest)
        if mix is not None:
            with open(work / f"{r}_mix.pkl", "wb") as f:
                pickle.dump(mix, f)
        out[r] = {"objects": str(work / f"{r}_objects.pkl"), "mix": str(work / f"{r}_mix.pkl") if mix else None,
                  "repeats": cfg["repeated_aug"]}
    return out


def child(spec):
    ips = run_ours(spec) if spec["loader"] == "ours" else run_torch(spec)
    print(json.dumps({"images_per_s": ips}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="resnet50,deit")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--modes", default="threads,processes",
                    help="ours: python_multiprocessing false / true; per-image: processes as data.py ran them before the "
                         "batch workers made the rows; mix-in-main: per-image, mixing in the main process")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default="runs/bench_pipeline/imagenet_like/data",
                    help="a packed directory (scripts/bench_pipeline.py --recipes imagenet-basic makes this one)")
    ap.add_argument("--work", default="runs/bench_dataloader")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    data_dir = (ROOT / a.data).resolve()
    if not (data_dir / "manifest.json").exists():
        raise SystemExit(f"{data_dir}: run scripts/bench_pipeline.py --recipes imagenet-basic first (it makes the JPEGs)")
    work = ROOT / a.work
    work.mkdir(parents=True, exist_ok=True)
    recipes, workers = a.recipes.split(","), [int(w) for w in a.workers.split(",")]
    modes = a.modes.split(",")
    if set(modes) - set(MODES):
        ap.error(f"--modes: {a.modes!r}: each must be one of {', '.join(MODES)}")
    objects = prepare(data_dir, recipes, a.batch, work)
    settings = []
    for r in recipes:
        for w in workers:
            settings += [(r, w, "ours", MODES[m]) for m in modes] + [(r, w, "torch", None)]
    figures = {s: [] for s in settings}
    for k in range(a.rounds):
        for s in settings:
            r, w, loader, pm = s
            spec = dict(recipe=r, workers=w, loader=loader, pm=pm, batch=a.batch, batches=a.batches, warmup=a.warmup,
                        data_dir=str(data_dir), round=k, **objects[r])
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, env=ENV,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{s} failed:\n{proc.stderr[-3000:]}")
            ips = json.loads(proc.stdout.strip().splitlines()[-1])["images_per_s"]
            figures[s].append(ips)
            print(f"round {k + 1}: {r} workers={w} {loader} {'' if pm is None else next(m for m, v in MODES.items() if v == pm)}"
                  f": {ips:.1f} images/s", file=sys.stderr, flush=True)
    rows = []
    print("\n| recipe | workers | ours: workers as | ours, rounds (images/s) | ours median | DataLoader (processes), "
          "rounds | DataLoader median | ours / DataLoader per round | median ratio | spread ours, DL (max/min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in recipes:
        for w in workers:
            dl = figures[(r, w, "torch", None)]
            for m in modes:
                ours = figures[(r, w, "ours", MODES[m])]
                ratios = [o / t for o, t in zip(ours, dl)]
                row = dict(recipe=r, workers=w, mode=m, ours=ours, dataloader=dl, ratios=ratios,
                           ours_median=statistics.median(ours), dataloader_median=statistics.median(dl),
                           ratio_median=statistics.median(ratios))
                rows.append(row)
                print(f"| {r} | {w} | {m} | {', '.join(f'{x:.0f}' for x in ours)} | {row['ours_median']:.0f} "
                      f"| {', '.join(f'{x:.0f}' for x in dl)} | {row['dataloader_median']:.0f} "
                      f"| {', '.join(f'{x:.2f}' for x in ratios)} | {row['ratio_median']:.2f} "
                      f"| {max(ours) / min(ours):.2f}, {max(dl) / min(dl):.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"batch": a.batch, "batches": a.batches, "warmup": a.warmup,
                                            "rounds": a.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
