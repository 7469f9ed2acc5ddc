"""MindRecord -> mindspore.dataset pipelines (the contract is in DESIGN.md and export/pack.py)."""
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from PIL import Image
from mindcv.data.mixup import Mixup

from . import augment, compat, repeated_aug
from .batch_layout import device_rows
from .device_input import normalize_on_device

compat.fix_worker_pool_teardown()  # 5 s saved at the end of every pipeline with worker processes


def load_manifest(data_dir) -> Dict:
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; point data_dir at a directory written by `python -m export pack`")
    return json.loads(path.read_text())


def split_files(data_dir, manifest: Dict, split: str):
    files = [str(Path(data_dir) / f["name"]) for f in manifest["splits"][split]["files"]]
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: listed in {data_dir}/manifest.json but missing")
    return files


def _mindcv_policy(cfg: Dict):
    """mindcv's AutoAugment / TrivialAugmentWide / AugMix (not matched to timm; no shipped config uses
    them) on the PIL image our crop gives, as a PIL -> PIL callable."""
    from mindcv.data.auto_augment import (augment_and_mix_transform, auto_augment_transform,
                                          trivial_augment_wide_transform)
    from mindspore.dataset.vision import Inter
    policy = cfg["auto_augment"]
    hparams = dict(translate_const=int(cfg["image_size"] * 0.45),
                   img_mean=tuple(min(255, round(255 * m)) for m in cfg["mean"]),
                   interpolation=getattr(Inter, cfg["interpolation"].upper(), Inter.BILINEAR))
    if policy.startswith("trivialaugwide"):
        transform = trivial_augment_wide_transform(policy, hparams)
    elif policy.startswith("augmix"):
        transform = augment_and_mix_transform(policy, dict(hparams, translate_pct=0.3))
    else:
        transform = auto_augment_transform(policy, hparams)
    return _NumpyPolicy(transform)


class _NumpyPolicy:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        out = self.transform(np.asarray(img))
        return out if isinstance(out, Image.Image) else Image.fromarray(np.asarray(out, dtype=np.uint8))


def _imagenet_ops(cfg: Dict, train: bool, rank: int = 0, uint8: bool = False):
    """timm 0.3.2's ImageNet transforms (augment.py; tests/test_fidelity_augment.py), after MindSpore's
    Decode. Train, one Python op: RandomResizedCrop (PIL, antialiased) -> flip -> RandAugment (timm's
    ops) or colour jitter -> normalise -> random erasing (re_mode); `uint8`: stops before normalising
    (no erasing then). Eval: resize the shorter side to size / crop_pct and centre crop (PIL),
    MindSpore's Normalize."""
    size = cfg["image_size"]
    if not train:
        return [vision.Decode(),
                augment.EvalImage(size, cfg["crop_pct"], augment.pil_filter(cfg["interpolation"], train=False)),
                vision.Normalize(mean=[255 * m for m in cfg["mean"]], std=[255 * s for s in cfg["std"]]),
                vision.HWC2CHW()]
    filters = augment.pil_filter(cfg["interpolation"], train=True)
    policy = cfg["auto_augment"]
    if policy and policy.split("-")[0] in ("rand", "randaug"):
        # timm: the fill is the mean colour; the ops use the train interpolation (random: drawn per op)
        fill = tuple(min(255, round(255 * m)) for m in cfg["mean"])
        extra = augment.parse_rand_policy(policy, fill=fill, interpolation=filters)
    elif policy:
        extra = _mindcv_policy(cfg)
    elif cfg["color_jitter"] is not None:
        extra = augment.ColorJitter(*(cfg["color_jitter"],) * 3)
    else:
        extra = None
    erasing = augment.RandomErasing(cfg["re_prob"], mode=cfg["re_mode"]) if cfg["re_prob"] > 0 else None
    return [vision.Decode(), augment.TrainTransform(augment.RandomResizedCrop(size, scale=tuple(cfg["rrc_scale"]), interpolation=filters),
                                   hflip=0.5 if cfg["hflip"] else 0.0, augment=extra, mean=cfg["mean"],
                                   std=cfg["std"], erasing=erasing, rank=rank, normalize=not uint8)]


def image_ops(cfg: Dict, train: bool, rank: int = 0, uint8: Optional[bool] = None):
    """The per-image ops from encoded bytes to a normalised CHW float32 array. The eval ops start with
    `vision.Decode` (predict relies on it) and read only the preprocessing keys (PREPROCESS_KEYS in
    deploy.py), so evaluate, export and predict share them. `rank`: the training ops of each rank draw
    their own augmentations (augment.TrainTransform). `uint8` (default: the training split where
    `device_normalize` resolves on, device_input.py): the same ops up to the normalisation, giving the
    CHW uint8 image that device_input.DeviceNormalize normalises on the device."""
    uint8 = (train and normalize_on_device(cfg)) if uint8 is None else uint8
    if cfg["transforms"] == "imagenet":
        return _imagenet_ops(cfg, train, rank, uint8)
    size = cfg["image_size"]
    # RGB (a grey PNG becomes three equal channels); resized first, so that the padded crop works on
    # images of any size (a 2000x8 strip, a 20 px image at image_size 32)
    ops = [vision.Decode(), vision.Resize((size, size))]
    if train:
        if cfg["crop_padding"]:
            ops.append(vision.RandomCrop(size, padding=cfg["crop_padding"]))
        if cfg["hflip"]:
            ops.append(vision.RandomHorizontalFlip())
    if not uint8:  # (the crop pads the uint8 image with 0: normalising before or after it is the same)
        ops += [vision.Rescale(1.0 / 255.0, 0.0), vision.Normalize(mean=cfg["mean"], std=cfg["std"])]
    return ops + [vision.HWC2CHW()]


class PerMicroBatch:
    """mixup/cutmix drawn per micro-batch of `micro` rows, as the references' loops mix every loader batch
    (timm's Mixup in ConvNeXt's train_one_epoch, once per micro-batch under update_freq): the pipeline's
    batch holds the `accumulate_steps` micro-batches of one update (engine.TrainStep splits it).
    `rank`: its draws are this rank's own (augment.RankSalt), as the references' per-rank seeds make
    them; without it every rank mixed its batch with the same lambda and box in the same step."""

    def __init__(self, mix: Mixup, micro: int, rank: int = 0):
        self.mix, self.micro, self.salt = mix, micro, augment.RankSalt(rank)

    def __call__(self, images: np.ndarray, labels: np.ndarray):
        self.salt()
        if len(images) <= self.micro:  # one micro-batch: no concatenation (a copy of the whole batch, 38 MB
            return self.mix(images, labels)  # for DeiT's 64 x 3 x 224 x 224 float32; scripts/bench_dataloader.py)
        parts = [self.mix(images[i:i + self.micro], labels[i:i + self.micro]) for i in range(0, len(images), self.micro)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _mixup(cfg: Dict, manifest: Dict, rank: int = 0) -> Optional[PerMicroBatch]:
    if cfg["mixup"] <= 0 and cfg["cutmix"] <= 0:
        return None
    return PerMicroBatch(Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                               switch_prob=cfg["mixup_switch_prob"], label_smoothing=cfg["label_smoothing"],
                               num_classes=manifest["num_classes"]), cfg["batch_size"], rank)


def rows_in_batch_workers(cfg: Dict, train: bool) -> bool:
    """Whether the training batch op's workers make the batch's rows themselves (decode, augment, write
    into the batch, mix: repeated_aug.rows_op), as the DataLoader's workers do, instead of a map's workers
    handing over each image. Needs Python transforms (`transforms: imagenet`: MindSpore's own random ops,
    called eagerly in a per_batch_map, are re-seeded on every call: repeated_aug.py) and 2 or more
    workers, and then measured (scripts/bench_dataloader.py, docs/benchmarks.md):
    * with mixup/cutmix (its batch op's workers hold whole batches anyway): DeiT's transforms in 2
      processes 1.07x the DataLoader, against 0.79x for the map path in the same rounds (each image
      crossed shared memory to the main process, each batch to the mixing pool and back); in 2 threads +25%;
    * without, in threads: ResNet-50's transforms +25% (one Python call a batch instead of one an image);
      in processes the map stays: no gain measured, and a worker's shared memory would grow from one image
      to a batch (ResNet-50's 256 float32 images: 154 MB);
    * with one worker the map and the batch op run side by side in two, which one worker making the rows
      gives up (DeiT in threads: -12%)."""
    mixing = cfg["mixup"] > 0 or cfg["cutmix"] > 0
    return (train and cfg["transforms"] == "imagenet" and cfg["num_parallel_workers"] > 1
            and (mixing or not cfg["python_multiprocessing"]))


def _encoded_as_uint8(encoded):
    return np.frombuffer(encoded, np.uint8)


def create_dataset(cfg: Dict, split: str, num_shards: Optional[int] = None,
                   shard_id: Optional[int] = None, with_index: bool = False) -> Tuple[ds.Dataset, int]:
    """Returns (batched dataset, number of samples this rank reads per epoch). Train yields (image,
    label, text_emb), eval yields (image, label); `with_index` appends the records' `index` (tests).
    With `repeated_aug` R > 1 every rank reads the same shuffled order and trains its positions of the
    R-times repeated list, as DeiT's RASampler deals them (repeated_aug.py).

    The training pipeline is built once per run: it reshuffles every epoch, in an order fixed by
    `seed` (a resumed run reaches the same epoch's order through `set_init_step`), each rank reading
    its MindRecord shard. The eval split is cut into contiguous slices, one per rank, that together
    hold every sample exactly once (MindRecord sharding would pad the last shard with repeats).

    Train images are CHW uint8 where `device_normalize` resolves on (device_input.py: the train step
    normalises them on the device), CHW float32 otherwise; eval images are always float32."""
    manifest = load_manifest(cfg["data_dir"])
    train = split == "train"
    files = split_files(cfg["data_dir"], manifest, split)
    columns = (["image", "label", "text_emb"] if train else ["image", "label"]) + (["index"] if with_index else [])
    repeats = cfg["repeated_aug"] if train else 1
    if train:
        ds.config.set_seed(cfg["seed"])  # the shuffle order and the random augmentations
        kwargs = dict(shuffle=True, num_shards=num_shards, shard_id=shard_id) if num_shards else dict(shuffle=True)
    else:
        kwargs = dict(shuffle=False)
        if num_shards:
            total = ds.MindDataset(files, columns_list=["label"], shuffle=False).get_dataset_size()
            if total < num_shards:
                raise ValueError(f"{cfg['data_dir']}: {total} eval samples for {num_shards} devices; "
                                 f"every device needs at least one")
            start, stop = total * shard_id // num_shards, total * (shard_id + 1) // num_shards
            kwargs = dict(sampler=ds.SequentialSampler(start_index=start, num_samples=stop - start))
    workers = dict(num_parallel_workers=cfg["num_parallel_workers"],
                   python_multiprocessing=cfg["python_multiprocessing"])
    ops = image_ops(cfg, train, shard_id or 0)
    if repeats > 1:  # every rank reads the seed's order; the batch op deals and augments R copies per record
        data, records = repeated_aug.reader(files, columns, repeats, num_shards, device_rows(cfg))
        return repeated_aug.batch(data, records, ops, cfg, columns, _mixup(cfg, manifest, shard_id or 0), workers,
                                  num_shards or 1, shard_id or 0)
    data = ds.MindDataset(files, columns_list=columns, num_parallel_workers=1, **kwargs)
    n = data.get_dataset_size()
    if train and len(ops) == 2 and isinstance(ops[0], vision.Decode) and isinstance(ops[1], augment.TrainTransform):
        # TrainTransform decodes the encoded bytes itself, with PIL: the same pixels as MindSpore's Decode
        # (libjpeg either way; checked on JPEG RGB/grey/CMYK/progressive and PNG), at 0.8 instead of 1.4 ms
        # of CPU per 500x375 JPEG (scripts/bench_dataloader.py; docs/benchmarks.md, Input pipeline)
        ops = ops[1:]
    # a training batch holds the micro-batches of one update (batch_layout.py; engine.TrainStep splits it)
    batch = device_rows(cfg) if train else cfg["eval_batch_size"]
    mix = _mixup(cfg, manifest, shard_id or 0) if train else None
    if rows_in_batch_workers(cfg, train):
        return repeated_aug.rows_op(data, batch, range(batch), ops, mix, columns, workers), n
    if cfg["python_multiprocessing"]:
        # then MindSpore runs the op list in Python worker processes, which hand the first op the
        # record's numpy.bytes_ (mindcv's RandomCropDecodeResize refused it); decoders take a uint8 array
        ops = [_encoded_as_uint8] + ops
    data = data.map(ops, input_columns="image", **workers)
    # train drops the ragged last batch (one static graph); eval keeps every sample
    if mix is not None:
        # images and labels are mixed (labels become soft targets, label smoothing folded in); the text
        # embeddings stay those of the unmixed images, as in the authors' DeiT training

        def mix_batch(images, labels, batch_info):  # per_batch_map receives lists of samples
            return mix(np.stack(images), np.stack(labels))

        data = data.batch(batch, drop_remainder=True, per_batch_map=mix_batch, input_columns=["image", "label"],
                          **workers)
    else:
        data = data.batch(batch, drop_remainder=train)
    return data, n


class PipelineError(ValueError):
    """A sample the input pipeline could not turn into a batch (the CLI prints it as one line)."""


@contextmanager
def pipeline_errors(split: str, data_dir):
    """MindSpore reports a failing map op as a RuntimeError with a page of C++ context; this keeps
    the line that says what failed and adds which split and what to do."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if "Pipeline Error" not in text and "dataset pipeline" not in text.lower():
            raise
        lines = [l.strip() for l in text.splitlines() if l.strip() and not set(l.strip()) <= set("-")]
        # a Python op's own exception (the last "SomethingError: ..." of the Python call stack) says more
        # than MindSpore's "[ERROR] Execute user Python code failed, check 'Python Call Stack' above"
        stack = text.split("Python Call Stack", 1)[1].split("Dataset Pipeline Error Message")[0] \
            if "Python Call Stack" in text else ""
        raised = [l.strip() for l in stack.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\w*: ", l)]
        detail = (raised[-1] if raised else None) or next((l for l in lines if l.startswith("[ERROR]")), None) or \
            next((l for l in lines if "Exception" in l or "Error" in l), lines[0] if lines else text)
        detail = re.sub(r"^\[ERROR\]\s*", "", detail)
        detail = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", detail)  # PIL's name for the bytes
        raise PipelineError(f"{split} split of {data_dir}: the input pipeline failed: {detail[:300]} -- check the "
                            f"images with `python -m export verify {data_dir}` and the transform keys of the "
                            f"config (image_size, crop_padding, transforms)") from None
