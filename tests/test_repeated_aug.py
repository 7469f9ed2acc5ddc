"""Repeated augmentation (`repeated_aug: 3`, ms_gpt4image/repeated_aug.py) against DeiT's RASampler.

The reference is RASampler as in facebookresearch/deit samplers.py, rewritten below from reading it
(torch, the test-time dependency), with its dealing also applied to a given order (`deal`): every rank
of ours must train RASampler's indices of MindSpore's shuffled order, row for row, with R differently
augmented copies of each image. `packed` has 80 training images, fewer than RASampler's rounding unit
(256), so the pipeline tests compare with the reference at round_to=1 (our only change for n < 256); the
arithmetic tests use the reference as it is.
"""
import itertools
import json
import math

import numpy as np
import pytest
import torch

import mindspore.dataset as ds

from conftest import ROOT, run_cli, run_cli_concurrently
from ms_gpt4image.config import ConfigError, load_config
from ms_gpt4image.data import create_dataset, load_manifest, split_files
from ms_gpt4image.repeated_aug import plan, rows_of_rank


class RASampler:
    """DeiT's RASampler (facebookresearch/deit samplers.py): 3 repeats, epoch-seeded permutation,
    round-robin over ranks, each rank keeping floor(n // 256 * 256 / W) (round_to=256)."""

    def __init__(self, n, num_replicas, rank, round_to=256):
        self.n, self.num_replicas, self.rank, self.epoch = n, num_replicas, rank, 0
        self.num_samples = int(math.ceil(n * 3.0 / num_replicas))
        self.total_size = self.num_samples * num_replicas
        self.num_selected_samples = int(math.floor(n // round_to * round_to / num_replicas))

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch)
        return iter(self.deal(torch.randperm(self.n, generator=g).tolist()))

    def deal(self, order):
        """RASampler.__iter__ after its permutation: repeat, pad, deal round-robin, keep the selected."""
        indices = [i for i in order for _ in range(3)]
        indices += indices[:(self.total_size - len(indices))]
        assert len(indices) == self.total_size
        indices = indices[self.rank:self.total_size:self.num_replicas]
        assert len(indices) == self.num_samples
        return indices[:self.num_selected_samples]

    def __len__(self):
        return self.num_selected_samples

    def set_epoch(self, epoch):
        self.epoch = epoch


def reference_epoch(n, world, batch_size, epoch=0, round_to=256):
    """{rank: indices trained} of one epoch: RASampler + DataLoader(drop_last=True)."""
    out = {}
    for rank in range(world):
        sampler = RASampler(n, world, rank, round_to)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        out[rank] = indices[:len(indices) // batch_size * batch_size]
    return out


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_counts_per_rank_and_epoch_match_rasampler(world):
    for n, batch in ((1281167, 128), (1281167, 96), (10000, 48), (1000, 30), (1000, 16)):
        p = plan(n, world, 3, batch)
        ref = RASampler(n, world, 0)
        assert p["selected"] == len(ref)                           # RASampler's per-rank count
        assert p["steps"] == len(ref) // batch                     # DataLoader(drop_last=True) steps
        assert p["samples"] == p["steps"] * batch                  # rows trained per rank and epoch
        assert p["records"] == p["steps"] * math.ceil(batch * world / 3)
    # our dealing of an order, step by step, against RASampler's of the same order
    for n, batch in ((10000, 48), (10000, 128), (1000, 30), (1000, 16)):
        order = np.random.default_rng(n + batch).permutation(n).tolist()
        p = plan(n, world, 3, batch)
        for rank in range(world):
            ref = RASampler(n, world, rank).deal(order)[:p["samples"]]
            ours = [order[step * p["per_step"] + i] for step in range(p["steps"])
                    for i in rows_of_rank(rank, world, 3, batch)]
            if batch * world % 3 == 0:
                assert ours == ref  # row for row
            else:  # copies never straddle steps: the dealing restarts at a whole image every step
                assert ours[:batch] == ref[:batch] and len(ours) == len(ref)
        counts = np.bincount([i for rank in range(world) for step in range(p["steps"])
                              for i in (order[step * p["per_step"] + j] for j in rows_of_rank(rank, world, 3, batch))],
                             minlength=n)
        assert np.count_nonzero(counts) == p["records"] and set(np.unique(counts)) <= {0, 1, 2, 3}
        ref_distinct = len({i for rank in range(world) for i in RASampler(n, world, rank).deal(order)[:p["samples"]]})
        assert 0 <= p["records"] - ref_distinct <= (p["steps"] if batch * world % 3 else 0)  # one per step at most


def _cfg(packed, *extra):
    return load_config(None, [f"data_dir={packed / 'data'}", "transforms=imagenet", "image_size=28",
                              "repeated_aug=3", "batch_size=6", "num_parallel_workers=2", "re_prob=0.25",
                              "auto_augment=randaug-m9-mstd0.5-inc1", *extra])


def _epochs(cfg, epochs, world=1, rank=0, start_epoch=0):
    """[epoch] -> (indices, images) of one rank, iterating one pipeline as training does."""
    data, n = create_dataset(cfg, "train", num_shards=world if world > 1 else None,
                             shard_id=rank if world > 1 else None, with_index=True)
    if start_epoch:
        data.set_init_step(start_epoch * data.get_dataset_size())
    it = data.create_dict_iterator(num_epochs=epochs, output_numpy=True)
    out = []
    for _ in range(start_epoch, epochs):
        batches = list(it)
        out.append((np.concatenate([b["index"] for b in batches]), np.concatenate([b["image"] for b in batches])))
        for b in batches:  # labels and text embeddings go with their images
            first = np.array([np.flatnonzero(b["index"] == i)[0] for i in b["index"]])
            assert all((b[k] == b[k][first]).all() for k in ("label", "text_emb"))
    return n, data.get_dataset_size(), out


def _order(cfg, epochs, records):
    """MindSpore's shuffled order of each epoch, as every rank reads it (the seed's, cut at `records`)."""
    files = split_files(cfg["data_dir"], load_manifest(cfg["data_dir"]), "train")
    ds.config.set_seed(cfg["seed"])
    data = ds.MindDataset(files, columns_list=["index"], shuffle=True, num_parallel_workers=1).take(records)
    it = data.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    return [[int(row[0]) for row in it] for _ in range(epochs)]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_pipeline_per_rank_is_rasamplers_dealing(packed, world):
    cfg = _cfg(packed)
    n_images, batch, epochs = 80, cfg["batch_size"], 2
    p = plan(n_images, world, 3, batch)
    orders = _order(cfg, epochs, p["records"])
    assert orders[0] != orders[1] and len(set(orders[0])) == p["records"]  # a new permutation every epoch
    images_of = {e: {} for e in range(epochs)}
    for rank in range(world):
        n, steps, out = _epochs(cfg, epochs, world, rank)
        ref = RASampler(n_images, world, rank, round_to=1)
        assert (n, steps) == (p["samples"], len(ref) // batch)  # rows and steps per rank: RASampler's
        for e, (indices, images) in enumerate(out):
            rest = [i for i in range(n_images) if i not in set(orders[e])]  # past the rows trained: any order
            assert indices.tolist() == ref.deal(orders[e] + rest)[:n]  # RASampler's indices of this order, row for row
            for i, image in zip(indices.tolist(), images):
                images_of[e].setdefault(i, []).append(image)
    for e in range(epochs):
        assert len(images_of[e]) == p["records"]  # about a third of the 80
        for copies in images_of[e].values():  # 3 copies over the ranks, each augmented differently
            assert len(copies) == 3
            assert all(np.abs(a - b).max() > 0 for a, b in itertools.combinations(copies, 2))


def test_accumulated_micro_batches_deal_as_one_batch_of_their_rows(packed):
    """accumulate_steps 2 x batch 3 per rank reads, per update, RASampler's next 6 rows of that rank: the
    indices of a batch of 6 (the micro-batches are its halves, as a DataLoader's consecutive batches)."""
    for rank in range(2):
        _, steps, micro = _epochs(_cfg(packed, "batch_size=3", "accumulate_steps=2"), 1, 2, rank)
        _, steps_whole, whole = _epochs(_cfg(packed), 1, 2, rank)
        assert steps == steps_whole and micro[0][0].tolist() == whole[0][0].tolist()


def test_fresh_subset_every_epoch_and_the_same_order_after_resume(packed):
    # one worker thread: augment.py's Python ops share Python's `random` between threads, so two threads
    # draw in a racy order (worker processes, below, are reseeded one by one and draw reproducibly)
    cfg = _cfg(packed, "num_parallel_workers=1")
    n, steps, full = _epochs(cfg, 3)
    assert (n, steps) == (78, 13)  # 80 images: 26 distinct per epoch, each 3 times, 13 batches of 6
    subsets = [set(indices.tolist()) for indices, _ in full]
    assert len(subsets[0]) == 26 and subsets[0] != subsets[1] != subsets[2]
    assert len(subsets[0] | subsets[1] | subsets[2]) > 40  # not the same third every epoch
    _, _, again = _epochs(cfg, 3)
    assert all((a[0] == b[0]).all() and np.array_equal(a[1], b[1]) for a, b in zip(full, again))  # seeded
    old = ds.config.get_fast_recovery()
    try:
        for fast in (True, False):  # exact_resume false / true
            ds.config.set_fast_recovery(fast)
            _, _, resumed = _epochs(cfg, 3, start_epoch=2)
            assert (resumed[0][0] == full[2][0]).all()  # the same images in the same order
            if not fast:  # the pipeline replayed: the same augmentations too
                assert np.array_equal(resumed[0][1], full[2][1])
    finally:
        ds.config.set_fast_recovery(old)


def test_python_multiprocessing_and_mixup(packed):
    cfg = _cfg(packed, "python_multiprocessing=true", "batch_size=8")
    n, steps, [(indices, images)] = _epochs(cfg, 1)
    assert (n, steps) == (80, 10) and images.shape == (80, 3, 28, 28)
    # 8 = 3 + 3 + 2: the last image of each batch gets the copies that fit, as RASampler splits one
    runs = [[len(list(g)) for _, g in itertools.groupby(indices[b:b + 8].tolist())] for b in range(0, 80, 8)]
    assert runs == [[3, 3, 2]] * 10 and np.unique(indices).size == 30
    for start in range(0, 80, 8):
        for a, b in ((0, 1), (0, 2), (1, 2), (6, 7)):  # the copies' augmentations differ in worker processes too
            assert np.abs(images[start + a] - images[start + b]).max() > 0
    _, _, [(indices2, images2)] = _epochs(cfg, 1)
    assert (indices2 == indices).all() and np.array_equal(images2, images)  # reproducible
    mixed = _cfg(packed, "python_multiprocessing=true", "mixup=0.8", "cutmix=1.0", "label_smoothing=0.1")
    data, _ = create_dataset(mixed, "train")
    image, label, text = next(data.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert image.shape == (6, 3, 28, 28) and label.shape == (6, 10) and text.shape == (6, 384)
    assert np.allclose(label.sum(axis=1), 1.0, atol=1e-5) and (text[0] == text[1]).all()


def test_config_checks():
    with pytest.raises(ConfigError, match="repeated_aug = 3 needs transforms: imagenet"):
        load_config(None, ["repeated_aug=3"])
    with pytest.raises(ConfigError, match="batch_size = 2 < repeated_aug = 3"):
        load_config(None, ["repeated_aug=3", "transforms=imagenet", "batch_size=2"])
    for name in ("imagenet_deit_small", "imagenet_deit_base", "imagenet_deit_base_authors", "imagenet_deit_small_baseline",
                 "imagenet_deit_base_tau0p1"):
        assert load_config(name)["repeated_aug"] == 3, name
    assert load_config("imagenet_convnext_tiny")["repeated_aug"] == 1


def _train_cfg(tmp_path, packed, name, extra=""):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"data_dir: {packed / 'data'}\noutput_dir: {tmp_path / name}\nmodel: simple_cnn\n"
                 "model_kwargs: {width: 8}\ntransforms: imagenet\nimage_size: 28\nrepeated_aug: 3\nbatch_size: 12\n"
                 "eval_batch_size: 40\nepoch_size: 2\nwarmup_epochs: 0\nlr: 0.05\nmixup: 0.8\ncutmix: 1.0\n"
                 "dataset_sink_mode: true\nema: true\nema_decay: 0.9\nreport_top1: raw\npython_multiprocessing: true\n"
                 "num_parallel_workers: 2\n" + extra)
    return p


def test_training_with_repeated_aug_and_resume(packed, tmp_path):
    full, split = (_train_cfg(tmp_path, packed, n, e) for n, e in (("full", ""), ("split", "stop_at_epoch: 1\n")))
    outs = run_cli_concurrently(("-m", "ms_gpt4image", "train", "-c", full), ("-m", "ms_gpt4image", "train", "-c", split))
    assert "72 images per device, 6 updates/epoch" in outs[0].stdout  # 80 images: 24 per epoch, each 3 times
    ev = json.loads(run_cli_concurrently(  # report_top1 max: evaluate gives the better of raw and EMA
        ("-m", "ms_gpt4image", "train", "-c", split, "--resume"),
        ("-m", "ms_gpt4image", "evaluate", "-c", full, "--set", "report_top1=max", "--ckpt",
         tmp_path / "full" / "last.ckpt"))[1].stdout)
    logs = {n: [json.loads(l) for l in (tmp_path / n / "log.jsonl").read_text().splitlines()] for n in ("full", "split")}
    assert [r["epoch"] for r in logs["split"]] == [1, 2]
    for a, b in zip(logs["full"], logs["split"]):  # the resumed run replays the same images and augmentations
        for key in ("loss", "ce", "align", "top1", "top1_ema"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    # raw and EMA top-1 logged every epoch; the summary reports report_top1's (raw here) and says so
    last = logs["full"][-1]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["reported"] == "raw" and summary["reported_weights"] == "raw"
    assert summary["final_top1"] == summary["final_top1_raw"] == last["top1"]
    assert summary["final_top1_ema"] == last["top1_ema"]
    assert summary["best_top1"] == max(r["top1"] for r in logs["full"])
    assert ev["reported"] == "max" and ev["top1"] == pytest.approx(max(last["top1"], last["top1_ema"]))
    assert (ev["top1_raw"], ev["top1_ema"]) == pytest.approx((last["top1"], last["top1_ema"]))
