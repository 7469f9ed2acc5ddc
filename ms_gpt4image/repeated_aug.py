"""Repeated augmentation (config `repeated_aug: R`, R > 1): every image of an epoch is trained R times
in the same global step, each copy with its own augmentation draws (Hoffer et al. 2020, "Augment your
batch"; DeiT's default, R = 3).

The reference is DeiT's `RASampler` (facebookresearch/deit samplers.py), which the GPT4Image authors'
DeiT code uses too. Per epoch it takes a seeded permutation of the n images, repeats each index R times
in a row, deals the list round-robin to the W ranks (rank r takes positions r, r + W, ...) and lets each
rank keep the first floor(n // 256 * 256 / W) of its positions: an epoch sees about n / R distinct
images, each R times, the copies in the same step on R neighbouring ranks (on one rank, adjacent, when
W = 1).

Ours deals the same way. `ds.MindDataset` takes only its own samplers and the training pipeline is built
once per run, so the dealing happens in the batch op:
* every rank reads the same order: the whole training set shuffled with the config's seed (no MindRecord
  sharding: the seed is the same on every rank, so is the permutation, new every epoch), of which an
  epoch takes the first `records` (`plan`);
* the batch op takes the `per_step` = ceil(batch_size * W / R) records that one global step covers, and
  its per_batch_map (`RepeatedBatch`) keeps this rank's positions of their repeated list, r, r + W, ...
  (record (r + k W) // R for row k), decoding each kept record once and running the other training ops
  (`data.image_ops`) once per copy, with fresh random draws; then mixup/cutmix over the batch, as
  without repeats.
So a rank trains RASampler's indices of this permutation, row for row, and steps per epoch are
RASampler's with DataLoader(drop_last=True): tests/test_repeated_aug.py checks both against RASampler
itself for W = 1, 2, 4, 8. Each rank reads the encoded bytes of every record of a step (about R / W of
them are its own: with W = 8 ranks on one host the page cache serves the other 7 reads) and decodes only
its own.

One difference: where R does not divide the global batch (DeiT: 8 x 128 = 1024, R = 3) RASampler lets
an image's copies straddle two steps; here they never do: a step's last image gets the copies that fit
(1024 = 341 x 3 + 1), so an epoch holds a few more distinct images (1 per step: 0.3% at DeiT's batch).
The alignment loss is the reference's: copies in one batch (W < R) are negatives of each other, as in
RASampler's batches.

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

from .batch_layout import device_rows


def selected_per_rank(n: int, world_size: int) -> int:
    """RASampler's per-rank sample count, floor(n // 256 * 256 / W); without the 256 rounding for
    n < 256 (where RASampler would select nothing)."""
    rounded = n // 256 * 256 if n >= 256 else n
    return rounded // world_size


def plan(n: int, world_size: int, repeats: int, batch_size: int) -> Dict[str, int]:
    """What each rank trains per epoch: `selected` (RASampler's count), `steps` = floor(selected /
    batch_size) (RASampler's with DataLoader(drop_last=True)), `per_step` = ceil(batch_size * W / R)
    records per global step, `records` = steps * per_step records of the epoch's order read by every
    rank (the distinct images of an epoch), `samples` = steps * batch_size rows a rank trains."""
    selected = selected_per_rank(n, world_size)
    steps = selected // batch_size
    per_step = -(-batch_size * world_size // repeats)
    return {"selected": selected, "steps": steps, "per_step": per_step, "records": steps * per_step,
            "samples": steps * batch_size}


def rows_of_rank(rank: int, world_size: int, repeats: int, batch_size: int) -> List[int]:
    """The record (0 .. per_step - 1 within a step) of each of the rank's batch_size rows: RASampler's
    positions rank, rank + W, ... of the step's repeated list, position p holding record p // R."""
    return [(rank + k * world_size) // repeats for k in range(batch_size)]


def reader(files: Sequence[str], columns: List[str], repeats: int, num_shards: Optional[int], batch_size: int):
    """(the MindDataset every rank reads, `records` per epoch): the whole set, shuffled every epoch in the
    seed's order, the epoch cut at `records` with take (MindDataset's own num_samples without shards
    would draw with replacement in MindSpore 2.7)."""
    n = ds.MindDataset(list(files), columns_list=["label"], shuffle=False).get_dataset_size()
    world = num_shards or 1
    p = plan(n, world, repeats, batch_size)
    if p["steps"] == 0:
        raise ValueError(f"{n} training images over {world} device(s): {p['selected']} per device (RASampler's "
                         f"count) < batch_size {batch_size}")
    data = ds.MindDataset(list(files), columns_list=columns, num_parallel_workers=1, shuffle=True)
    return data.take(p["records"]), p["records"]


def _decode_and_rest(ops: List):
    """(the op list's leading vision.Decode or None, the ops to run once per copy)."""
    if ops and isinstance(ops[0], vision.Decode):
        return ops[0], ops[1:]
    return None, ops  # one Python op from encoded bytes (augment.TrainTransform): each copy decodes


class RepeatedBatch:
    """per_batch_map: the per_step records of one global step -> this rank's batch_size rows (rows_of_rank).
    A leading vision.Decode runs once per kept record, the other ops once per row, with fresh random
    draws each time. `mix` (mindcv's Mixup) then mixes the whole batch. Columns: image, label, then any
    others (text_emb, index), taken with the same rows as the labels."""

    def __init__(self, ops: List, rows: List[int], mix: Optional[Callable] = None):
        self.decode, self.rest = _decode_and_rest(ops)
        self.rows, self.mix = np.asarray(rows), mix

    def augment(self, image):
        for op in self.rest:
            image = op(image)
        return image

    def __call__(self, images, labels, *columns):
        *columns, _batch_info = columns
        decoded = {}
        for i in sorted(set(self.rows.tolist())):
            decoded[i] = np.frombuffer(images[i], np.uint8)
            if self.decode is not None:
                decoded[i] = self.decode(decoded[i])
        rows = [decoded[i] for i in self.rows]
        if len(self.rest) == 1 and hasattr(self.rest[0], "stack"):  # augment.TrainTransform: rows into one array
            images = self.rest[0].stack(rows)
        else:
            images = np.stack([self.augment(image) for image in rows])
        labels = np.stack(labels)[self.rows]
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return (images, labels) + tuple(np.stack(c)[self.rows] for c in columns)


def batch(data, records: int, ops: List, cfg: Dict, columns: List[str], mix: Optional[Callable], workers: Dict,
          world_size: int = 1, rank: int = 0):
    """The training batch op with repeated augmentation over `data` (`records` per epoch, image still
    encoded), for `rank` of `world_size`. Returns (batched dataset, rows it yields per epoch)."""
    r, size = cfg["repeated_aug"], device_rows(cfg)  # the rows of one update (its micro-batches in turn)
    per_step = -(-size * world_size // r)
    return (rows_op(data, per_step, rows_of_rank(rank, world_size, r, size), ops, mix, columns, workers),
            records // per_step * size)


def rows_op(data, records: int, rows: Sequence[int], ops: List, mix: Optional[Callable], columns: List[str],
            workers: Dict):
    """data.batch of `records` encoded records whose per_batch_map (RepeatedBatch) makes the batch's `rows`
    from them: decoded, augmented, stacked and mixed in the batch op's workers (data.create_dataset uses it
    with rows 0 .. records - 1: one copy of each record)."""
    make = RepeatedBatch(ops, rows, mix)
    # MindSpore checks that per_batch_map's signature has one argument per column (and batch_info)
    if len(columns) == 3:
        def per_batch(images, labels, text_emb, batch_info):
            return make(images, labels, text_emb, batch_info)
    else:
        def per_batch(images, labels, text_emb, index, batch_info):
            return make(images, labels, text_emb, index, batch_info)
    return data.batch(records, drop_remainder=True, per_batch_map=per_batch, input_columns=columns, **workers)
