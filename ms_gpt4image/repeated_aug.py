"""Repeated augmentation (config `repeated_aug: R`, R > 1): every image of an epoch is trained R times
in the same global step, each copy with its own augmentation draws (Hoffer et al. 2020, "Augment your
batch"; DeiT's default, R = 3).

The reference is DeiT's `RASampler` (facebookresearch/deit, samplers.py), which the GPT4Image authors'
DeiT code uses too. Per epoch it takes a seeded permutation of the n images, repeats each index R times
in a row, deals the list round-robin to the W ranks (rank r takes positions r, r + W, ...) and lets each
rank keep the first floor(n // 256 * 256 / W) of its positions: an epoch sees about n / R distinct
images, each R times, the copies in the same step on R neighbouring ranks.

Ours, built from what `ds.MindDataset` offers (it takes only its own samplers, and the training
pipeline is built once per run, reshuffling every epoch):
* each rank reads its MindRecord shard shuffled, as without repeats, but only `distinct` = steps *
  ceil(batch_size / R) records of it per epoch (`plan`), where steps = floor(selected / batch_size)
  and selected = floor(n // 256 * 256 / W) is RASampler's per-rank count (n < 256, the tests' data:
  floor(n / W)). MindRecord reshuffles and reshards every epoch, so each epoch reads a fresh random
  subset, disjoint between ranks;
* the batch op takes ceil(batch_size / R) records and its per_batch_map (`RepeatedBatch`) runs the
  training ops (`data.image_ops`) R times on each, the copies adjacent in the
  batch (labels and text embeddings repeated), then mixup/cutmix over the whole batch as without
  repeats. Where R does not divide batch_size (DeiT: 128 per device, R = 3) the batch's last image
  gets the copies that fit (here 2): RASampler too splits an image's copies between two steps
  wherever the global batch (1024) is not a multiple of R.
Steps per epoch are RASampler's with DataLoader(drop_last=True), floor(selected / batch_size);
tests/test_repeated_aug.py checks them, and the distinct images per epoch, against RASampler itself
for W = 1, 2, 4, 8.

The deliberate difference: the R copies of an image sit in the same local batch of one rank (RASampler
puts them on R different ranks of the same global step). The global batch holds the same images and
copies; what changes is only which rank computes which copy. That matters for what is local to a rank:
* the alignment loss (losses.py): a copy's negatives would include the other copies' text embedding,
  which is its own; the loss masks same-image pairs (`repeats`), so a copy's negatives are the texts of
  the other images only (with RASampler and the rank-local infonce loss the copies never meet; the
  authors' gathered CLIP loss does score them as negatives of each other);
* with fewer ranks than R RASampler too puts copies of an image in one batch (W = 1: all R, adjacent,
  the layout we use everywhere), where its losses do score them as each other's negatives; ours do not.

Why the augmentations run inside the batch op: three map ops over three copies of the image column get
identical draws (MindSpore seeds every random op instance with the same `ds.config` seed), and
MindSpore has no op that turns one row into R rows before a map. Called eagerly, MindSpore's own
random ops (vision.RandomCrop, ...) are re-seeded on each call and would give R identical copies, so
repeated augmentation needs the Python ops of `transforms: imagenet` (augment.py), which draw from
Python's `random` and numpy's generator (config.validate says so). With python_multiprocessing each
worker process is reseeded (seed + worker id) and the draws are reproducible; with several worker
threads the threads share Python's generator and the order of draws between them is not.
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import mindspore.dataset as ds
import mindspore.dataset.vision as vision


def selected_per_rank(n: int, world_size: int) -> int:
    """RASampler's per-rank sample count, floor(n // 256 * 256 / W); without the 256 rounding for
    n < 256 (where RASampler would select nothing)."""
    rounded = n // 256 * 256 if n >= 256 else n
    return rounded // world_size


def plan(n: int, world_size: int, repeats: int, batch_size: int) -> Dict[str, int]:
    """What each rank trains per epoch: `selected` (RASampler's count), `steps` = floor(selected /
    batch_size) (RASampler's with DataLoader(drop_last=True)), `per_batch` = ceil(batch_size / R)
    records per batch, `distinct` = steps * per_batch records read per epoch, `samples` = steps *
    batch_size rows trained. When R does not divide batch_size (DeiT: 128 and 3) the last record of
    each batch gets batch_size - R * (per_batch - 1) copies, as RASampler splits the copies of an image
    between two steps where its global batch (1024) is not a multiple of R."""
    selected = selected_per_rank(n, world_size)
    steps = selected // batch_size
    per_batch = -(-batch_size // repeats)
    return {"selected": selected, "steps": steps, "per_batch": per_batch, "distinct": steps * per_batch,
            "samples": steps * batch_size}


def reader_kwargs(files: Sequence[str], repeats: int, num_shards: Optional[int], shard_id: Optional[int],
                  batch_size: int) -> Dict:
    """ds.MindDataset arguments: the rank's shard, shuffled every epoch, `distinct` records per epoch.
    Always through num_shards/shard_id: MindSpore 2.7's MindDataset(shuffle=True, num_samples=k)
    without them draws with replacement (an image twice in an epoch)."""
    n = ds.MindDataset(list(files), columns_list=["label"], shuffle=False).get_dataset_size()
    world = num_shards or 1
    p = plan(n, world, repeats, batch_size)
    if p["steps"] == 0:
        raise ValueError(f"{n} training images over {world} device(s): {p['selected']} per device (RASampler's "
                         f"count) < batch_size {batch_size}")
    return dict(shuffle=True, num_shards=world, shard_id=shard_id or 0, num_samples=p["distinct"])


def _decode_and_rest(ops: List):
    """(the op list's leading vision.Decode or None, the ops to run once per copy)."""
    if ops and isinstance(ops[0], vision.Decode):
        return ops[0], ops[1:]
    return None, ops  # one Python op from encoded bytes (augment.TrainTransform): each copy decodes


class RepeatedBatch:
    """per_batch_map: ceil(batch_size / R) records -> batch_size rows, copy c of record i at row R * i + c
    (the last record's copies cut at batch_size). A leading vision.Decode runs once per record, the other
    ops once per copy, with fresh random draws each time. `mix` (mindcv's Mixup) then mixes the whole batch.
    Columns: image, label, then any others (text_emb, index), repeated as the labels are."""

    def __init__(self, ops: List, repeats: int, batch_size: int, mix: Optional[Callable] = None):
        self.decode, self.rest = _decode_and_rest(ops)
        self.repeats, self.batch_size, self.mix = repeats, batch_size, mix

    def augment(self, image):
        for op in self.rest:
            image = op(image)
        return image

    def copies(self, column) -> np.ndarray:
        return np.repeat(np.stack(column), self.repeats, axis=0)[:self.batch_size]

    def __call__(self, images, labels, *columns):
        *columns, _batch_info = columns
        out = []
        for encoded in images:
            decoded = np.frombuffer(encoded, np.uint8)
            if self.decode is not None:
                decoded = self.decode(decoded)
            out += [self.augment(decoded) for _ in range(min(self.repeats, self.batch_size - len(out)))]
        images, labels = np.stack(out), self.copies(labels)
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return (images, labels) + tuple(self.copies(c) for c in columns)


def batch(data, records: int, ops: List, cfg: Dict, columns: List[str], mix: Optional[Callable], workers: Dict):
    """The training batch op with repeated augmentation over `data`, the rank's `records` per epoch
    (image still encoded). Returns (batched dataset, rows it yields per epoch)."""
    r, size = cfg["repeated_aug"], cfg["batch_size"]
    make = RepeatedBatch(ops, r, size, mix)
    # MindSpore checks that per_batch_map's signature has one argument per column (and batch_info)
    if len(columns) == 3:
        def per_batch(images, labels, text_emb, batch_info):
            return make(images, labels, text_emb, batch_info)
    else:
        def per_batch(images, labels, text_emb, index, batch_info):
            return make(images, labels, text_emb, index, batch_info)
    per_batch_records = -(-size // r)
    return (data.batch(per_batch_records, drop_remainder=True, per_batch_map=per_batch, input_columns=columns,
                       **workers), records // per_batch_records * size)
