"""The training input pipeline: built once, reshuffled per epoch in a reproducible order that a
resumed run reaches again; each rank's eval slice; images of any size; pipeline errors as one line."""
import gc
import json
import multiprocessing
import shutil

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset as ds

from conftest import run_cli
from ms_gpt4image.config import load_config
from ms_gpt4image.data import create_dataset


def epoch_batches(cfg, epochs: int, start_epoch: int = 0, fast_recovery: bool = True):
    """[epoch][batch] -> (first text-embedding value of each sample: the order, image sum: the augmentation)."""
    data, _ = create_dataset(cfg, "train")
    steps = data.get_dataset_size()
    old = ds.config.get_fast_recovery()
    ds.config.set_fast_recovery(fast_recovery)
    try:
        if start_epoch:
            data.set_init_step(start_epoch * steps)
        it = data.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
        return [[(tuple(np.round(t[:, 0], 6)), float(x.sum())) for x, _, t in it] for _ in range(start_epoch, epochs)]
    finally:
        ds.config.set_fast_recovery(old)


def test_one_pipeline_reshuffles_every_epoch_and_resumes_in_order(packed):
    cfg = load_config(None, [f"data_dir={packed / 'data'}", "batch_size=16", "num_parallel_workers=1"])
    full = epoch_batches(cfg, 3)
    orders = [[b[0] for b in e] for e in full]
    assert len(full[0]) == 80 // 16 and orders[0] != orders[1] != orders[2]  # a new order every epoch
    assert sorted(sum(orders[0], ())) == sorted(sum(orders[1], ()))  # ... of the same samples
    assert epoch_batches(cfg, 3) == full  # the seed fixes orders and augmentations
    # resumed at epoch 2: the same order; the augmentations too when the pipeline is replayed
    fast = epoch_batches(cfg, 3, start_epoch=1)
    assert [[b[0] for b in e] for e in fast] == orders[1:]
    assert epoch_batches(cfg, 3, start_epoch=1, fast_recovery=False) == full[1:]
    other = epoch_batches(load_config(None, [f"data_dir={packed / 'data'}", "batch_size=16", "seed=7"]), 1)
    assert [b[0] for b in other[0]] != orders[0]


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_eval_slices_hold_every_sample_once(packed, shards):
    cfg = load_config(None, [f"data_dir={packed / 'data'}", "eval_batch_size=6"])
    seen = []
    for rank in range(shards):
        data, n = create_dataset(cfg, "eval", **(dict(num_shards=shards, shard_id=rank) if shards > 1 else {}))
        labels = [y for _, batch in data.create_tuple_iterator(output_numpy=True) for y in batch]
        assert len(labels) == n and abs(n - 40 / shards) < 1
        seen += labels
    whole, _ = create_dataset(cfg, "eval")
    assert seen == [y for _, batch in whole.create_tuple_iterator(output_numpy=True) for y in batch]


def test_small_transforms_take_images_of_any_size(tmp_path):
    """Resize before the padded crop: a 2000x8 strip, a 20 px and a 1x1 image train at image_size 32."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    sizes = [(2000, 8), (8, 2000), (20, 20), (1, 1), (40, 30), (32, 32)]
    for split, reps in (("train", 2), ("test", 1)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes * reps):
                arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    run_cli("-m", "export", "describe", "--source", "imagefolder", "--root", root, "--out", tmp_path / "d.jsonl")
    run_cli("-m", "export", "embed", "--descriptions", tmp_path / "d.jsonl", "--out", tmp_path / "emb")
    run_cli("-m", "export", "pack", "--source", "imagefolder", "--root", root, "--descriptions", tmp_path / "d.jsonl",
            "--embeddings", tmp_path / "emb", "--out", tmp_path / "data")
    cfg = tmp_path / "odd.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\noutput_dir: {tmp_path / 'run'}\nmodel: simple_cnn\n"
                   "image_size: 32\ncrop_padding: 4\nbatch_size: 4\neval_batch_size: 5\nepoch_size: 1\n")
    run_cli("-m", "ms_gpt4image", "train", "-c", cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_images"] == 24 and summary["eval_images"] == 12


@pytest.mark.parametrize("python_ops", [False, True])
def test_a_broken_image_is_one_clear_line(python_ops, packed, tmp_path):
    """An image that cannot be decoded (bytes flipped inside the packed file) stops training with one
    line naming the split and what to do: exit 2, no traceback. `python_ops`: the ImageNet transforms
    with mixup in 2 worker processes (the batch workers make the rows): the line gives PIL's error,
    not MindSpore's pointer to a Python call stack that is not shown."""
    shutil.copytree(packed / "data", tmp_path / "data")
    path = tmp_path / "data" / "train.mindrecord"
    blob = bytearray(path.read_bytes())
    at = blob.index(b"IHDR")  # the first PNG's header chunk
    blob[at:at + 12] = b"\x00" * 12
    path.write_bytes(bytes(blob))
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\noutput_dir: {tmp_path / 'run'}\nmodel: simple_cnn\n"
                   "batch_size: 16\nepoch_size: 1\n" + ("transforms: imagenet\nimage_size: 32\nmixup: 0.8\n"
                                                        "python_multiprocessing: true\nnum_parallel_workers: 2\n"
                                                        if python_ops else ""))
    p = run_cli("-m", "ms_gpt4image", "train", "-c", cfg, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    error = [l for l in p.stderr.replace("\r", "\n").splitlines() if l.startswith("error:")]
    assert len(error) == 1 and "train split of" in error[0] and "export verify" in error[0], p.stderr[-2000:]
    if python_ops:
        assert "UnidentifiedImageError: cannot identify image file --" in error[0], error[0]


def test_python_transforms_in_worker_processes(packed, monkeypatch):
    """The DeiT recipe's pipeline (mindcv RandomCropDecodeResize, RandAugment, random erasing, mixup)
    with its Python ops in worker processes, as the ImageNet configs run it; when the iterator goes, each
    pool's clean process quits when told to instead of being killed after MindSpore's 5 s join timeout
    (compat.fix_worker_pool_teardown: without it each is killed, 5 s per pool and pass)."""
    from mindspore.dataset.engine.datasets import _PythonMultiprocessing
    cfg = load_config("configs/imagenet_deit_small.yaml",
                      [f"data_dir={packed / 'data'}", "image_size=32", "batch_size=8", "num_parallel_workers=2"])
    assert cfg["python_multiprocessing"]
    data, _ = create_dataset(cfg, "train")
    it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
    image, label, text = next(it)
    assert image.shape == (8, 3, 32, 32) and label.shape == (8, 10) and text.shape == (8, 384)
    assert np.isfinite(image).all() and np.allclose(label.sum(axis=1), 1.0, atol=1e-5)  # mixed soft targets
    killed, terminate = [], _PythonMultiprocessing._terminate_processes
    monkeypatch.setattr(_PythonMultiprocessing, "_terminate_processes",
                        staticmethod(lambda procs: (killed.extend(p.name for p in procs), terminate(procs))))
    cleaners = [p for p in multiprocessing.active_children() if p.name == "MapCleanProcess"]
    assert cleaners  # one per pool of worker processes
    del it, data
    gc.collect()
    assert not any(p.is_alive() for p in cleaners)  # torn down
    assert "MapCleanProcess" not in killed, killed


@pytest.mark.parametrize("recipe", ["convnext_tiny", "resnet50-threads"])
def test_batch_workers_make_the_rows_of_the_records_the_map_path_reads(recipe, packed, monkeypatch):
    """The batch op's workers decode, augment, write into the batch and mix the rows
    (data.rows_in_batch_workers): the ConvNeXt recipe (mixup, no repeated augmentation) in worker
    processes, and the ResNet-50 recipe (no mixup, uint8 to the device) in worker threads. The batches hold
    the records the per-image path (a map's workers, then the batch op) reads, in the same order, each row
    with its record's text embedding and its label (in the soft target, mixed); and with worker processes
    the same seed gives the same pixels (threads share Python's generator: not reproducible either way)."""
    from mindspore.mindrecord import FileReader
    from ms_gpt4image import data as data_module
    from ms_gpt4image.data import load_manifest, split_files
    threads = recipe.endswith("-threads")
    cfg = load_config(f"configs/imagenet_{recipe.split('-')[0]}.yaml",
                      [f"data_dir={packed / 'data'}", "image_size=32", "batch_size=8", "num_parallel_workers=2"]
                      + (["python_multiprocessing=false"] if threads else []))
    assert data_module.rows_in_batch_workers(cfg, train=True)
    mixing = cfg["mixup"] > 0

    def batches():
        data, _ = create_dataset(cfg, "train", with_index=True)
        return list(data.create_tuple_iterator(num_epochs=1, output_numpy=True))
    ours = batches()
    records = {}
    for f in split_files(cfg["data_dir"], load_manifest(cfg["data_dir"]), "train"):
        reader = FileReader(f, columns=["index", "label", "text_emb"])
        records.update({int(r["index"]): (int(r["label"]), r["text_emb"]) for r in reader.get_next()})
        reader.close()
    assert len(ours) == 80 // 8
    smoothing = cfg["label_smoothing"]
    for image, target, emb, index in ours:
        assert image.shape == (8, 3, 32, 32) and image.dtype == (np.float32 if mixing else np.uint8)
        np.testing.assert_array_equal(emb, np.stack([records[int(i)][1] for i in index]))
        labels = [records[int(i)][0] for i in index]
        if not mixing:
            assert target.tolist() == labels
            continue
        # mixup's targets: lam * smoothed(labels) + (1 - lam) * smoothed(labels of the reversed batch)
        smoothed = np.full((8, 10), smoothing / 10) + (1 - smoothing) * np.eye(10)[labels]
        pair = smoothed[::-1]
        row = int(np.argmax(np.abs(smoothed - pair).sum(axis=1)))  # a row whose pair has another label
        label = int(np.argmax(smoothed[row]))
        lam = (target[row, label] - pair[row, label]) / (smoothed[row, label] - pair[row, label])
        np.testing.assert_allclose(target, lam * smoothed + (1 - lam) * pair, atol=1e-5)
    if not threads:
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches()]), np.concatenate([b[0] for b in ours]))
    monkeypatch.setattr(data_module, "rows_in_batch_workers", lambda cfg, train: False)
    assert [b[3].tolist() for b in batches()] == [b[3].tolist() for b in ours]  # the map path's records


def test_each_rank_mixes_with_its_own_draws(packed):
    """The ConvNeXt recipe (mixup/cutmix, no repeated augmentation) on 2 ranks, mixing in a worker process
    as configured: each rank draws its own lambda (and box) per step, as the references' per-rank seeds
    make them (augment.RankSalt), reproducibly; before, both ranks mixed with the same draws."""
    def mixing(rank):
        cfg = load_config("configs/imagenet_convnext_tiny.yaml", [f"data_dir={packed / 'data'}", "image_size=32",
                                                                   "batch_size=8", "num_parallel_workers=1"])
        assert cfg["python_multiprocessing"] and cfg["repeated_aug"] == 1 and cfg["mixup"] > 0
        data, _ = create_dataset(cfg, "train", num_shards=2, shard_id=rank)
        it = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
        # a batch's smallest soft-target maximum: the mixing weight of its rows of two classes
        return [round(float(next(it)[1].max(axis=1).min()), 5) for _ in range(3)]
    rank1 = mixing(1)
    assert mixing(0) != rank1
    assert mixing(1) == rank1
