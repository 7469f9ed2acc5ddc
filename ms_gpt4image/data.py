"""MindRecord -> mindspore.dataset pipelines (the contract is in DESIGN.md and export/pack.py)."""
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from mindcv.data import create_transforms
from mindcv.data.mixup import Mixup


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


def _imagenet_ops(cfg: Dict, train: bool):
    """mindcv's ImageNet transforms (RandomResizedCrop, flip, RandAugment / colour jitter, random
    erasing; eval: resize to size/crop_pct + centre crop). mindcv normalises on the 0..255 scale."""
    norm = dict(mean=[255 * m for m in cfg["mean"]], std=[255 * s for s in cfg["std"]],
                interpolation=cfg["interpolation"])
    if not train:
        return create_transforms("imagenet", cfg["image_size"], is_training=False, crop_pct=cfg["crop_pct"], **norm)
    return create_transforms("imagenet", cfg["image_size"], is_training=True, auto_augment=cfg["auto_augment"],
                             scale=tuple(cfg["rrc_scale"]), hflip=0.5 if cfg["hflip"] else 0.0,
                             color_jitter=cfg["color_jitter"], re_prob=cfg["re_prob"], **norm)


def image_ops(cfg: Dict, train: bool):
    """The per-image ops from encoded bytes to a normalised CHW float32 array; the first op is
    `vision.Decode`. Eval ops read only the preprocessing keys (PREPROCESS_KEYS in deploy.py), so
    evaluate, export and predict share them."""
    if cfg["transforms"] == "imagenet":
        return _imagenet_ops(cfg, train)
    size = cfg["image_size"]
    ops = [vision.Decode()]  # RGB; a grey PNG becomes three equal channels
    if train:
        if cfg["crop_padding"]:
            ops.append(vision.RandomCrop(size, padding=cfg["crop_padding"]))
        if cfg["hflip"]:
            ops.append(vision.RandomHorizontalFlip())
    ops += [vision.Resize((size, size)),
            vision.Rescale(1.0 / 255.0, 0.0),
            vision.Normalize(mean=cfg["mean"], std=cfg["std"]),
            vision.HWC2CHW()]
    return ops


def create_dataset(cfg: Dict, split: str, epoch_seed: Optional[int] = None,
                   num_shards: Optional[int] = None, shard_id: Optional[int] = None) -> Tuple[ds.Dataset, int]:
    """Returns (batched dataset, number of samples read). Train yields (image, label, text_emb);
    eval yields (image, label). `epoch_seed` fixes the shuffle so a resumed run sees the same order."""
    manifest = load_manifest(cfg["data_dir"])
    train = split == "train"
    columns = ["image", "label", "text_emb"] if train else ["image", "label"]
    if epoch_seed is not None:
        ds.config.set_seed(epoch_seed)
    kwargs = dict(columns_list=columns, shuffle=train, num_parallel_workers=1)
    if num_shards:
        kwargs.update(num_shards=num_shards, shard_id=shard_id)
    data = ds.MindDataset(split_files(cfg["data_dir"], manifest, split), **kwargs)
    n = data.get_dataset_size()
    data = data.map(image_ops(cfg, train), input_columns="image", num_parallel_workers=cfg["num_parallel_workers"])
    batch = cfg["batch_size"] if train else cfg["eval_batch_size"]
    # train drops the ragged last batch (one static graph); eval keeps every sample
    if train and (cfg["mixup"] > 0 or cfg["cutmix"] > 0):
        # images and labels are mixed (labels become soft targets, label smoothing folded in); the text
        # embeddings stay those of the unmixed images, as in the authors' DeiT training
        mix = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                    switch_prob=cfg["mixup_switch_prob"], label_smoothing=cfg["label_smoothing"],
                    num_classes=manifest["num_classes"])

        def mix_batch(images, labels, batch_info):  # per_batch_map receives lists of samples
            return mix(np.stack(images), np.stack(labels))

        data = data.batch(batch, drop_remainder=True, per_batch_map=mix_batch, input_columns=["image", "label"])
    else:
        data = data.batch(batch, drop_remainder=train)
    return data, n
